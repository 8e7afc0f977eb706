"""Build the :class:`AnomalyDataset` of a split from a :class:`DataConfig`.

``cfg.name`` selects the layout:

* ``textures``: embedded generated textures (``fedad.data.textures``).
* ``mtd``: Magnetic Tile Defect (:mod:`fedad.data.mtd`); ``cfg.categories`` optionally keeps
  only some acquisition conditions (``exp1`` ...), ``cfg.mtd_train_list`` overrides the split.
* ``mvtec``: MVTec AD / MPDD / BTAD trees (:mod:`fedad.data.mvtec`).
* ``visa``: VisA with ``split_csv/1cls.csv`` (:mod:`fedad.data.visa`).
* ``mixed``: the ``cfg.parts`` (each a ``DataConfig``, built recursively) concatenated, product
  types prefixed with the part's name (see :func:`part_names`).

For ``mvtec``/``visa`` an empty ``cfg.categories`` means every category of the dataset.
``has_masks`` is True when any anomalous record has a mask file; for ``mixed`` it is True only
when every part has masks, so that anomalous images of an image-level-only part are never
given an all-zero mask that would corrupt pixel metrics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedad.config.schema import DataConfig
from fedad.data.dataset import AnomalyDataset, ImageSource
from fedad.data.io import FileSource, check_split
from fedad.data.mixed import mixed_records
from fedad.data.mtd import mtd_records
from fedad.data.mvtec import mvtec_categories, mvtec_records
from fedad.data.sample import SampleRecord
from fedad.data.textures import build_texture_dataset
from fedad.data.visa import visa_categories, visa_records
from fedad.errors import ConfigError, DataError

DATASET_NAMES = ("textures", "mtd", "mvtec", "visa", "mixed")
FILE_DATASETS = ("mtd", "mvtec", "visa")


def has_masks(records: Sequence[SampleRecord]) -> bool:
    """Whether any anomalous record has a mask file."""
    return any(not r.is_normal and r.mask_path is not None for r in records)


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ConfigError(f"dataset.root must be set for dataset {cfg.name!r}")
    return Path(cfg.root).expanduser()


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def _select_types(records: list[SampleRecord], wanted: Sequence[str]) -> list[SampleRecord]:
    known = sorted({r.product_type for r in records})
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ConfigError(
            f"unknown product type(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    keep = set(wanted)
    return [r for r in records if r.product_type in keep]


def file_records(cfg: DataConfig, split: str) -> list[SampleRecord]:
    """Records of a file-based dataset (``mtd``, ``mvtec``, ``visa``) for ``split``.

    Raises:
        ConfigError: unknown or non-file dataset name, missing root, bad split or category.
        DataError: see the layout readers.
    """
    _check_name(cfg.name)
    if cfg.name not in FILE_DATASETS:
        raise ConfigError(f"dataset {cfg.name!r} is not file-based ({', '.join(FILE_DATASETS)})")
    check_split(split)
    root = _require_root(cfg)
    wanted = list(dict.fromkeys(cfg.categories))
    if cfg.name == "mtd":
        records = mtd_records(root, split, cfg.mtd_train_list)
        return _select_types(records, wanted) if wanted else records
    if cfg.name == "mvtec":
        list_categories, read = mvtec_categories, mvtec_records
    else:
        list_categories, read = visa_categories, visa_records
    categories = wanted or list_categories(root)
    if not categories:
        raise DataError(f"no categories found in {cfg.name} root: {root}")
    return [r for c in categories for r in read(root, c, split)]


def part_names(parts: Sequence[DataConfig]) -> list[str]:
    """Unique names of mixed parts, used as product-type prefixes.

    A part is named ``<name>-<cat1>+<cat2>...`` when it has categories, else
    ``<name>-<basename of root>`` when it has a root, else ``<name>``. A name already taken
    gets ``-2``, ``-3``, ... appended (in part order).
    """
    names: list[str] = []
    for part in parts:
        if part.categories:
            base = f"{part.name}-{'+'.join(part.categories)}"
        elif part.root:
            base = f"{part.name}-{Path(part.root).expanduser().resolve().name}"
        else:
            base = part.name
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


class MixedSource:
    """Routes each (renamed) record of a mixed dataset to its part's source and record."""

    def __init__(self, routes: dict[SampleRecord, tuple[ImageSource, SampleRecord]]) -> None:
        self.routes = routes

    def _route(self, record: SampleRecord) -> tuple[ImageSource, SampleRecord]:
        try:
            return self.routes[record]
        except KeyError as exc:
            raise DataError(f"record is not part of this mixed dataset: {record.path}") from exc

    def load_image(self, record: SampleRecord) -> np.ndarray:
        """The part source's image of the original record."""
        source, original = self._route(record)
        return source.load_image(original)

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        """The part source's mask of the original record."""
        source, original = self._route(record)
        return source.load_mask(original, image_hw)


def _build_mixed(cfg: DataConfig, split: str) -> AnomalyDataset:
    if not cfg.parts:
        raise ConfigError("dataset 'mixed' needs at least one entry in dataset.parts")
    datasets = [build_dataset(part, split) for part in cfg.parts]
    names = part_names(cfg.parts)
    records = mixed_records([(n, ds.records) for n, ds in zip(names, datasets, strict=True)])
    originals = [(ds.source, r) for ds in datasets for r in ds.records]
    routes = dict(zip(records, originals, strict=True))
    return AnomalyDataset(
        records, MixedSource(routes), image_size=cfg.scored_size(),
        has_masks=all(ds.has_masks for ds in datasets),
    )


def relative_key(path: str, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (``path`` itself when it is not
    below ``root``)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return path if rel.startswith("..") else Path(rel).as_posix()


def build_dataset(cfg: DataConfig, split: str) -> AnomalyDataset:
    """The dataset of ``split`` (``train``/``test``) described by ``cfg``.

    Images are resized to ``cfg.image_size``; mean/std are the dataset defaults.

    Raises:
        ConfigError: unknown ``cfg.name`` (lists the valid names), bad split, missing root.
        DataError: the files do not match the layout (names the offending path).
    """
    _check_name(cfg.name)
    check_split(split)
    if cfg.name == "textures":
        return build_texture_dataset(cfg, split)
    if cfg.name == "mixed":
        return _build_mixed(cfg, split)
    records = file_records(cfg, split)  # checks the root first
    records = [replace(r, key=relative_key(r.path, Path(cfg.root))) for r in records]
    return AnomalyDataset(
        records, FileSource(), image_size=cfg.scored_size(), has_masks=has_masks(records)
    )
