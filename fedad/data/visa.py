"""VisA layout: ``<root>/split_csv/1cls.csv`` lists every image of every category.

The csv has the columns ``object,split,label,image,mask``: ``split`` is ``train``/``test``,
``label`` is ``normal``/``anomaly``, ``image`` and ``mask`` are paths relative to ``root``
(``mask`` empty for normal images). VisA has no defect-type names in this file, so anomalous
records get the defect type ``anomaly``. Records keep the csv's order.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fedad.data.io import check_split, require_dir
from fedad.data.sample import ANOMALOUS, NORMAL, SampleRecord
from fedad.errors import DataError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": NORMAL, "anomaly": ANOMALOUS}


@dataclass(frozen=True)
class VisaRow:
    """One csv row; ``line`` is the 1-based line number where it ends in the file (header = 1)."""

    line: int
    object: str
    split: str
    label: int
    image: str
    mask: str


def visa_csv_path(root: str | Path, csv_path: str | Path | None = None) -> Path:
    """The split file: ``csv_path`` if given, else ``<root>/split_csv/1cls.csv``."""
    return Path(csv_path) if csv_path is not None else Path(root) / SPLIT_CSV


def read_visa_csv(path: str | Path) -> list[VisaRow]:
    """Parse a VisA split csv.

    Raises:
        DataError: the file is missing, lacks a column, or has an unknown label or split.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"VisA split csv not found: {p}")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"VisA split csv {p} lacks column(s) {', '.join(missing)} "
                f"(expected {','.join(COLUMNS)}, found {','.join(header)})"
            )
        reader.fieldnames = header
        rows = [_parse_row(p, reader.line_num, raw) for raw in reader]
    return rows


def _parse_row(path: Path, line: int, raw: dict[str, str | None]) -> VisaRow:
    value = {c: (raw.get(c) or "").strip() for c in COLUMNS}
    label = LABELS.get(value["label"].lower())
    if label is None:
        raise DataError(
            f"{path} line {line}: label must be normal or anomaly, got {value['label']!r}"
        )
    if value["split"] not in ("train", "test"):
        raise DataError(f"{path} line {line}: split must be train or test, got {value['split']!r}")
    return VisaRow(line, value["object"], value["split"], label, value["image"], value["mask"])


def visa_categories(root: str | Path, csv_path: str | Path | None = None) -> list[str]:
    """Sorted category (``object``) names listed in the split csv."""
    return sorted({row.object for row in read_visa_csv(visa_csv_path(root, csv_path))})


def _existing(root: Path, rel: str, what: str, csv_file: Path, line: int) -> Path:
    p = root / rel
    if not p.is_file():
        raise DataError(f"{what} listed in {csv_file} line {line} not found: {p}")
    return p


def visa_records(
    root: str | Path, category: str, split: str, csv_path: str | Path | None = None
) -> list[SampleRecord]:
    """Records of one VisA category and split.

    Args:
        root: VisA root; csv paths are relative to it.
        category: ``object`` value (also the records' ``product_type``).
        split: ``train`` or ``test``.
        csv_path: another split csv (default ``<root>/split_csv/1cls.csv``).

    Raises:
        DataError: missing root or csv, unknown category (lists the known ones), a listed
            image or mask file that does not exist, no images for this category and split.
        ConfigError: ``split`` is not ``train``/``test``.
    """
    check_split(split)
    r = require_dir(root, "VisA root")
    csv_file = visa_csv_path(r, csv_path)
    rows = read_visa_csv(csv_file)
    known = sorted({row.object for row in rows})
    if category not in known:
        raise DataError(
            f"category {category!r} not in {csv_file} (known: {', '.join(known) or 'none'})"
        )
    records = []
    for row in rows:
        if row.object != category or row.split != split:
            continue
        image = _existing(r, row.image, "image", csv_file, row.line)
        mask = _existing(r, row.mask, "mask", csv_file, row.line) if row.mask else None
        records.append(SampleRecord(
            path=str(image),
            label=row.label,
            product_type=category,
            defect_type="good" if row.label == NORMAL else "anomaly",
            mask_path=str(mask) if mask is not None else None,
        ))
    if not records:
        raise DataError(f"no {split} images of category {category!r} in {csv_file}")
    return records
