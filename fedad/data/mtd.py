"""Magnetic Tile Defect (MTD) dataset in its published layout, with the DifferNet split.

::

    <root>/MT_Free/Imgs/*.jpg           defect-free images (+ all-zero *.png masks)
    <root>/MT_<Defect>/Imgs/*.jpg       defective images, each with a *.png mask of its stem
    <root>/differnet_train_filenames.txt

* The list file names one training image per line (bare file names such as
  ``exp6_num_34208.jpg``; a path is reduced to its file name; blank lines and ``#`` comments
  are skipped). Train = the listed ``MT_Free`` images (761 in the published split); test =
  the other ``MT_Free`` images plus every defective image.
* ``product_type`` is the acquisition condition, the stem's prefix before the first ``_``
  (``exp0`` .. ``exp6``). ``defect_type`` is the folder name without ``MT_``, lowercased
  (``blowhole``), and ``good`` for ``MT_Free``.
* Normal images always get ``mask_path=None``: their published masks are all zero, and
  :class:`~fedad.data.dataset.AnomalyDataset` gives mask-less normal images an all-zero mask
  anyway, so the 952 files are never read. Defective images get their ``.png`` mask.
* Images are every non-``.png`` image file of an ``Imgs`` folder; ``.png`` files are masks.
"""

from __future__ import annotations

from pathlib import Path

from fedad.data.io import check_split, is_hidden, list_images, require_dir
from fedad.data.sample import ANOMALOUS, NORMAL, SampleRecord
from fedad.errors import DataError

FREE_FOLDER = "MT_Free"
FOLDER_PREFIX = "MT_"
IMAGES_SUBFOLDER = "Imgs"
TRAIN_LIST = "differnet_train_filenames.txt"
MASK_EXT = ".png"


def mtd_product_type(stem: str) -> str:
    """The acquisition condition of an image stem: ``exp3_num_45`` -> ``exp3``."""
    return stem.split("_", 1)[0]


def mtd_defect_type(folder: str) -> str:
    """``MT_Blowhole`` -> ``blowhole``; ``MT_Free`` -> ``good``."""
    return "good" if folder == FREE_FOLDER else folder.removeprefix(FOLDER_PREFIX).lower()


def read_train_list(path: str | Path) -> set[str]:
    """File names listed in an MTD training list (one per line).

    Raises:
        DataError: the list file does not exist or lists nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"MTD training list not found: {p}")
    names = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            names.add(Path(entry.replace("\\", "/")).name)
    if not names:
        raise DataError(f"MTD training list is empty: {p}")
    return names


def split_images(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    """The images (non-png image files, sorted) and masks (``.png`` by stem) of a folder."""
    files = list_images(folder)
    images = [f for f in files if f.suffix.lower() != MASK_EXT]
    masks = {f.stem: f for f in files if f.suffix.lower() == MASK_EXT}
    return images, masks


def defect_folders(root: Path) -> list[Path]:
    """``MT_*`` folders other than ``MT_Free``, sorted by name."""
    return sorted(
        d for d in root.iterdir()
        if d.is_dir() and not is_hidden(d) and d.name.startswith(FOLDER_PREFIX)
        and d.name != FREE_FOLDER
    )


def _normal_record(image: Path) -> SampleRecord:
    return SampleRecord(path=str(image), label=NORMAL, product_type=mtd_product_type(image.stem))


def _defect_records(folder: Path) -> list[SampleRecord]:
    imgs_dir = require_dir(folder / IMAGES_SUBFOLDER, f"MTD image folder of {folder.name}")
    images, masks = split_images(imgs_dir)
    records = []
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise DataError(f"defective image without mask: {image} (expected "
                            f"{image.with_suffix(MASK_EXT)})")
        records.append(SampleRecord(
            path=str(image),
            label=ANOMALOUS,
            product_type=mtd_product_type(image.stem),
            defect_type=mtd_defect_type(folder.name),
            mask_path=str(mask),
        ))
    if masks:
        orphan = masks[sorted(masks)[0]]
        raise DataError(f"mask without image: {orphan} (no image named {orphan.stem}.<ext>)")
    return records


def mtd_records(
    root: str | Path, split: str, train_list: str | Path | None = None
) -> list[SampleRecord]:
    """Records of the MTD train or test split.

    Args:
        root: folder holding ``MT_Free`` and the ``MT_<Defect>`` folders.
        split: ``train`` (listed normal images) or ``test`` (other normal + all defective).
        train_list: list file overriding ``<root>/differnet_train_filenames.txt``.

    Raises:
        DataError: missing root, ``MT_Free/Imgs`` or list file, a listed image that is not in
            ``MT_Free/Imgs``, a defective image without mask, an empty split.
        ConfigError: ``split`` is not ``train``/``test``.
    """
    check_split(split)
    r = require_dir(root, "MTD root")
    list_path = Path(train_list) if train_list is not None else r / TRAIN_LIST
    listed = read_train_list(list_path)
    free_dir = require_dir(r / FREE_FOLDER / IMAGES_SUBFOLDER, "MTD normal-image folder")
    normal, _ = split_images(free_dir)
    missing = sorted(listed - {p.name for p in normal})
    if missing:
        raise DataError(
            f"MTD training list {list_path} names {missing[0]}, which does not exist in "
            f"{free_dir} ({len(missing)} listed file(s) missing)"
        )
    if split == "train":
        records = [_normal_record(p) for p in normal if p.name in listed]
    else:
        records = [_normal_record(p) for p in normal if p.name not in listed]
        for folder in defect_folders(r):
            records.extend(_defect_records(folder))
    if not records:
        raise DataError(f"MTD {split} split is empty under {r}")
    return records
