"""F2PAD's cut-paste protocol (Sec. IV-A1, Eq. 16): defect-free images with a region of
random intensity in the shape of a defect mask, randomly resized, so the masks are exact
(real annotations are not: the paper's Fig. 4).

``x_gen = (1 - m) * n + m * a``: ``m`` is a shape from a pool (a real dataset's defect
masks, :func:`defect_shapes`, or Perlin blobs for a validation split that must not see test
masks, :func:`blob_shapes`), scaled by a random factor in ``scale`` and placed at a random
position wholly inside the image; ``a`` is one random grey intensity (fedad's embedded
textures and MTD are grey images). Where ``a`` lies within ``min_contrast`` grey levels
of the pixel it covers, the pixel is moved ``min_contrast`` away from the original
instead (the paper: "multiplying a desired factor"), so every pixel of ``m`` differs.
Everything is drawn from the image's name and the seed: the same set on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from fedad.data.dataset import AnomalyDataset, ImageSource
from fedad.data.sample import ANOMALOUS, SampleRecord
from fedad.data.textures import perlin_noise
from fedad.errors import DataError

CUT_PASTE = "cutpaste"  # defect_type of the generated images
SCALE = (0.5, 1.5)  # the random resize factor (the paper: "randomly resized")
MIN_CONTRAST = 48  # grey levels a pasted pixel differs from the one it covers, at least


@dataclass(frozen=True)
class Shape:
    """A defect's mask cropped to its box, and that box's size as a fraction of its
    image's height and width (a shape keeps its relative size on another image)."""

    mask: np.ndarray
    height: float
    width: float


def _rng(name: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"cutpaste:{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _shape(mask: np.ndarray) -> Shape | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(bool)
    return Shape(crop, crop.shape[0] / mask.shape[0], crop.shape[1] / mask.shape[1])


def defect_shapes(dataset: AnomalyDataset, limit: int | None = None) -> list[Shape]:
    """The masks of ``dataset``'s anomalous images (at their own resolution) as shapes.

    Raises:
        DataError: the dataset has no masks, or none of its anomalous images has one.
    """
    if not dataset.has_masks:
        raise DataError("cut-paste shapes need a dataset with pixel masks")
    shapes: list[Shape] = []
    for record in dataset.records:
        if record.label != ANOMALOUS:
            continue
        image = dataset.source.load_image(record)
        mask = dataset.source.load_mask(record, image.shape[:2])
        shape = None if mask is None else _shape(np.asarray(mask))
        if shape is not None:
            shapes.append(shape)
        if limit is not None and len(shapes) >= limit:
            break
    if not shapes:
        raise DataError("no anomalous image with a non-empty mask to take shapes from")
    return shapes


def blob_shapes(count: int, seed: int = 0, size: int = 128) -> list[Shape]:
    """``count`` Perlin blobs (thresholded noise, one connected-looking region each,
    2-10% of a ``size`` square): shapes that owe nothing to a test set."""
    out: list[Shape] = []
    rng = np.random.default_rng(seed)
    while len(out) < count:
        noise = perlin_noise((size, size), (4, 4), rng)
        mask = noise > np.quantile(noise, 1 - rng.uniform(0.02, 0.10))
        labels, n = ndimage.label(mask)
        if n == 0:
            continue
        biggest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
        shape = _shape(labels == biggest)
        if shape is not None and shape.mask.sum() >= 16:
            out.append(shape)
    return out


def paste(image: np.ndarray, shapes: Sequence[Shape], rng: np.random.Generator,
          scale: tuple[float, float] = SCALE, min_contrast: int = MIN_CONTRAST
          ) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 16 on ``image`` ``(H, W, 3)`` uint8: ``(defective image, mask (H, W) bool)``."""
    h, w = image.shape[:2]
    shape = shapes[int(rng.integers(len(shapes)))]
    factor = rng.uniform(*scale)
    sh = int(np.clip(round(shape.height * h * factor), 2, h))
    sw = int(np.clip(round(shape.width * w * factor), 2, w))
    resized = np.asarray(Image.fromarray(shape.mask.astype(np.uint8) * 255).resize(
        (sw, sh), Image.NEAREST)) > 127
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    mask = np.zeros((h, w), dtype=bool)
    mask[y:y + sh, x:x + sw] = resized
    if not mask.any():  # a shape thinner than a pixel after resizing: its centre
        mask[y + sh // 2, x + sw // 2] = True
    value = int(rng.integers(0, 256))
    grey = image.astype(np.int32).mean(axis=2)
    close = np.abs(value - grey) < min_contrast
    pasted = np.where(close, np.where(grey < 128, grey + min_contrast, grey - min_contrast),
                      value)
    out = image.copy()
    out[mask] = np.clip(pasted[mask], 0, 255).astype(np.uint8)[:, None]
    return out, mask


class CutPasteSource:
    """Normal images of another source, each with one pasted defect (:func:`paste`)."""

    def __init__(self, source: ImageSource, originals: dict[SampleRecord, SampleRecord],
                 shapes: Sequence[Shape], seed: int) -> None:
        self.source, self.originals, self.shapes, self.seed = source, originals, list(shapes), seed

    def _draw(self, record: SampleRecord) -> tuple[np.ndarray, np.ndarray]:
        original = self.originals[record]
        image = self.source.load_image(original)
        return paste(image, self.shapes, _rng(original.name, self.seed))

    def load_image(self, record: SampleRecord) -> np.ndarray:
        return self._draw(record)[0]

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        return self._draw(record)[1]


def cut_paste(dataset: AnomalyDataset, shapes: Sequence[Shape], seed: int = 0
              ) -> AnomalyDataset:
    """Every normal image of ``dataset`` with one pasted defect (label 1, exact masks),
    normalised as ``dataset`` is.

    Raises:
        DataError: no normal image, or no shape.
    """
    if not shapes:
        raise DataError("cut-paste needs at least one defect shape")
    normals = [r for r in dataset.records if r.label != ANOMALOUS]
    if not normals:
        raise DataError("cut-paste needs defect-free images")
    records = [replace(r, label=ANOMALOUS, defect_type=CUT_PASTE,
                       path=f"{CUT_PASTE}:{r.path}", mask_path=None) for r in normals]
    source = CutPasteSource(dataset.source, dict(zip(records, normals, strict=True)), shapes,
                            seed)
    out = AnomalyDataset(records, source, image_size=dataset.image_size, has_masks=True)
    out.mean, out.std = dataset.mean, dataset.std
    return out
