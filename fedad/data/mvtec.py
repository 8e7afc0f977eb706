"""MVTec AD layout (also MPDD and BTAD): ``<root>/<category>/{train,test,ground_truth}``.

::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png   (optional)

* ``good`` and BTAD's ``ok`` folders are normal (label 0, defect type ``good``); every other
  folder is a defect type (label 1), e.g. BTAD's ``ko``.
* A mask is matched to an image of the same defect folder by stem: ``<stem>_mask.<ext>`` or
  ``<stem>.<ext>`` with any image extension (MVTec/MPDD use the first, BTAD the second).
* Without a ``ground_truth`` folder every ``mask_path`` is ``None`` (image-level-only sets).
  With one, every anomalous test image must have a mask and every mask an image.
* Only the test split looks at ``ground_truth``.
"""

from __future__ import annotations

from pathlib import Path

from fedad.data.io import check_split, is_hidden, list_images, require_dir
from fedad.data.sample import ANOMALOUS, NORMAL, SampleRecord
from fedad.errors import DataError

NORMAL_FOLDERS = ("good", "ok")
GROUND_TRUTH = "ground_truth"
MASK_SUFFIX = "_mask"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_hidden(d))


def is_normal_folder(name: str) -> bool:
    """Whether a defect-type folder holds normal images (``good``/``ok``, any case)."""
    return name.lower() in NORMAL_FOLDERS


def mvtec_categories(root: str | Path) -> list[str]:
    """Categories under ``root``: sorted subfolders that have a ``train/`` or ``test/`` folder.

    Raises:
        DataError: ``root`` does not exist.
    """
    r = require_dir(root, "MVTec-style dataset root")
    return [d.name for d in _subdirs(r) if (d / "train").is_dir() or (d / "test").is_dir()]


def image_stem_for_mask(mask_stem: str, image_stems: set[str]) -> str | None:
    """The stem of the image a mask belongs to (``x_mask`` or ``x`` -> ``x``), or ``None``."""
    if mask_stem.endswith(MASK_SUFFIX) and mask_stem[: -len(MASK_SUFFIX)] in image_stems:
        return mask_stem[: -len(MASK_SUFFIX)]
    if mask_stem in image_stems:
        return mask_stem
    return None


def match_masks(gt_dir: Path, split_dir: Path) -> dict[str, dict[str, Path]]:
    """Masks under ``gt_dir/<defect>/`` keyed by defect folder, then by image stem.

    Raises:
        DataError: a mask has no image in ``split_dir/<defect>/`` ("mask without image"), or
            two masks belong to the same image.
    """
    out: dict[str, dict[str, Path]] = {}
    for defect_gt in _subdirs(gt_dir):
        image_dir = split_dir / defect_gt.name
        stems = {p.stem for p in list_images(image_dir)} if image_dir.is_dir() else set()
        by_stem: dict[str, Path] = {}
        for mask in list_images(defect_gt):
            stem = image_stem_for_mask(mask.stem, stems)
            if stem is None:
                base = mask.stem.removesuffix(MASK_SUFFIX)
                raise DataError(
                    f"mask without image: {mask} (no image named {base}.<ext> in {image_dir})"
                )
            if stem in by_stem:
                raise DataError(
                    f"several masks for image {stem!r} in {defect_gt}: "
                    f"{by_stem[stem].name} and {mask.name}"
                )
            by_stem[stem] = mask
        out[defect_gt.name] = by_stem
    return out


def _category_dir(root: Path, category: str) -> Path:
    cat_dir = root / category
    if not category or not cat_dir.is_dir():
        known = ", ".join(mvtec_categories(root)) or "none"
        raise DataError(
            f"category {category!r} not found: {cat_dir} (categories in {root}: {known})"
        )
    return cat_dir


def mvtec_records(root: str | Path, category: str, split: str) -> list[SampleRecord]:
    """Records of one category and split of an MVTec-style tree, sorted by folder and name.

    Args:
        root: dataset root holding one folder per category.
        category: category folder name (also the records' ``product_type``).
        split: ``train`` or ``test``.

    Raises:
        DataError: missing root, category (lists the existing ones) or split folder, a split
            without images, a mask without image, an anomalous image without mask.
        ConfigError: ``split`` is not ``train``/``test``.
    """
    check_split(split)
    r = require_dir(root, "MVTec-style dataset root")
    cat_dir = _category_dir(r, category)
    split_dir = require_dir(cat_dir / split, f"{split} split of category {category!r}")
    gt_dir = cat_dir / GROUND_TRUTH
    use_masks = split == "test" and gt_dir.is_dir()
    masks = match_masks(gt_dir, split_dir) if use_masks else {}
    records: list[SampleRecord] = []
    for defect_dir in _subdirs(split_dir):
        normal = is_normal_folder(defect_dir.name)
        defect_masks = masks.get(defect_dir.name, {})
        for image in list_images(defect_dir):
            mask = defect_masks.get(image.stem)
            if use_masks and not normal and mask is None:
                raise DataError(
                    f"anomalous image without mask: {image} (expected {image.stem}_mask.<ext> "
                    f"or {image.stem}.<ext> in {gt_dir / defect_dir.name})"
                )
            records.append(SampleRecord(
                path=str(image),
                label=NORMAL if normal else ANOMALOUS,
                product_type=category,
                defect_type="good" if normal else defect_dir.name,
                mask_path=str(mask) if mask is not None else None,
            ))
    if not records:
        raise DataError(
            f"no images in {split} split: {split_dir} (expected images in "
            f"{split_dir}/<defect_type>/)"
        )
    return records
