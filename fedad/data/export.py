"""Write records of any dataset as an MVTec-layout folder (``fedad.data.mvtec``).

A site in a deployment reads its *own* folder (``dataset.name=mvtec`` and the node's
``data-root``); this turns a partition of a shared dataset, e.g. the embedded textures, into
such folders so that a multi-host setup can be tried without real sites.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fedad.data.dataset import ImageSource
from fedad.data.mvtec import GROUND_TRUTH, MASK_SUFFIX
from fedad.data.sample import SampleRecord
from fedad.errors import DataError


def _safe(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if not out.strip("._"):
        raise DataError(f"cannot make a folder name from {name!r}")
    return out


def write_mvtec(source: ImageSource, records: Sequence[SampleRecord], split: str,
                root: Path) -> int:
    """Write ``records`` of ``split`` under ``root/<product type>/<split>/<defect>/NNN.png``
    (masks of anomalous test images under ``ground_truth/<defect>/NNN_mask.png``).

    Returns:
        The number of images written.

    Raises:
        DataError: a record's image or mask cannot be read (the record is named).
    """
    counters: dict[tuple[str, str], int] = {}
    for rec in records:
        key = (_safe(rec.product_type), "good" if rec.is_normal else _safe(rec.defect_type))
        idx = counters.get(key, 0)
        counters[key] = idx + 1
        folder = root / key[0] / split / key[1]
        folder.mkdir(parents=True, exist_ok=True)
        image = np.asarray(source.load_image(rec))
        Image.fromarray(image).save(folder / f"{idx:03d}.png")
        if split == "test" and not rec.is_normal and rec.mask_path is not None:
            mask = source.load_mask(rec, image.shape[:2])
            if mask is None:
                raise DataError(f"{rec.path}: mask {rec.mask_path} could not be read")
            gt = root / key[0] / GROUND_TRUTH / key[1]
            gt.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(
                gt / f"{idx:03d}{MASK_SUFFIX}.png")
    return sum(counters.values())
