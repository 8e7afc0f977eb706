"""Synthetic anomalies on normal images, for a validation split without real defects.

A client's held-out normal training images (:mod:`fedad.data.holdout`, never test images)
become a validation set: each image as it is (label 0) and once with one synthetic defect
(label 1): a cut-and-paste patch, a Perlin blob or a scratch, drawn by
:func:`fedad.data.textures.apply_defect` with donors from the texture photos scikit-image
ships (never from the image's own texture: a pasted patch of the same texture is no
defect). A detector's image and pixel AUROC on this set are what runs choose by where the
paper leaves a choice open (the round to keep, switches), never the test set.

The defect of an image depends only on its name (its path relative to the dataset root)
and the seed, so every run and every client draws the same validation anomalies, wherever
the data lie.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from fedad.data.dataset import AnomalyDataset
from fedad.data.sample import SampleRecord
from fedad.data.textures import DEFECT_TYPES, apply_defect
from fedad.errors import ConfigError, DataError

SYNTHETIC = "synthetic"  # defect_type prefix of the validation anomalies


def _rng(path: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 resized to ``(size, size, 3)`` as the dataset does (bilinear,
    antialiased), so the defect is drawn at the resolution the backbone sees."""
    if image.shape[:2] == (size, size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)[0]
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


class SyntheticDefectSource:
    """Pixels of ``source``; records whose ``defect_type`` starts with ``synthetic-`` get
    that seeded synthetic defect (and its mask), the others pass through unchanged."""

    def __init__(self, source, image_size: int, seed: int = 0, strength: float = 1.0) -> None:
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"synthetic defect strength must be in (0, 1], got {strength}")
        self.source = source
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.strength = float(strength)
        self._last: tuple[str, np.ndarray, np.ndarray] | None = None

    def _draw(self, record: SampleRecord) -> tuple[np.ndarray, np.ndarray]:
        if self._last is None or self._last[0] != record.path:
            image = _square(self.source.load_image(record), self.image_size)
            gray = np.rint(image.astype(np.float32).mean(axis=2)).astype(np.uint8)
            kind = record.defect_type.removeprefix(f"{SYNTHETIC}-")
            defected, mask = apply_defect(gray, kind, _rng(record.name, self.seed),
                                          record.product_type)
            out = image.copy()
            # a grey defect on every channel, blended in at `strength`
            base = image[mask].astype(np.float32)
            drawn = defected[mask].astype(np.float32)[:, None]
            out[mask] = np.clip(np.rint(base + self.strength * (drawn - base)), 0, 255)
            self._last = (record.path, out, mask)  # image then mask: read in turn
        return self._last[1], self._last[2]

    def load_image(self, record: SampleRecord) -> np.ndarray:
        if not record.defect_type.startswith(SYNTHETIC):
            return self.source.load_image(record)
        return self._draw(record)[0]

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        if not record.defect_type.startswith(SYNTHETIC):
            return None  # a normal image: the dataset gives it an all-zero mask
        return self._draw(record)[1]


def with_synthetic_anomalies(normals: AnomalyDataset, seed: int = 0,
                             strength: float = 1.0) -> AnomalyDataset:
    """``normals`` followed by one synthetic-defect copy of each (label 1, with its mask);
    each copy's defect type is drawn from :data:`DEFECT_TYPES` by its name (path relative
    to the dataset root, :attr:`SampleRecord.name`) and the seed,
    and blended into the image at ``strength`` (1: the textures' full-strength defects;
    lower values make subtler defects, so the split does not saturate on real data whose
    defects are subtle).

    Raises:
        DataError: ``normals`` holds an anomalous image (validation starts from normals).
    """
    bad = [r.path for r in normals.records if r.label != 0]
    if bad:
        raise DataError(f"validation images must be normal; {len(bad)} are not, e.g. {bad[0]}")
    records = list(normals.records)
    for r in normals.records:
        kind = DEFECT_TYPES[int(_rng(r.name, seed + 1).integers(len(DEFECT_TYPES)))]
        records.append(replace(r, label=1, defect_type=f"{SYNTHETIC}-{kind}"))
    source = SyntheticDefectSource(normals.source, normals.image_size, seed, strength)
    out = AnomalyDataset(records, source, normals.image_size, has_masks=True)
    out.mean, out.std = normals.mean, normals.std
    return out
