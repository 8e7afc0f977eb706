"""A torch ``Dataset`` over sample records: loads, resizes and normalises images and masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedad.data.sample import Sample, SampleRecord

IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)


class ImageSource(Protocol):
    """Where pixels come from: files on disk or arrays generated in memory."""

    def load_image(self, record: SampleRecord) -> np.ndarray:
        """Return the image as an ``(H, W, 3)`` uint8 RGB array."""

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        """Return the mask as an ``(H, W)`` bool array of the image's size, or ``None``."""


class AnomalyDataset(Dataset):
    """Images (and masks) of one split, resized to ``image_size`` squared.

    Args:
        records: the samples, in a fixed order.
        source: loads pixels for a record.
        image_size: side of the square the image and mask are resized to.
        mean, std: per-channel normalisation of the backbone.
        has_masks: the dataset has pixel annotations, so normal images get an all-zero mask
            and anomalous images must have one. When False every mask is ``None``.
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        source: ImageSource,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_INCEPTION_MEAN,
        std: Sequence[float] = IMAGENET_INCEPTION_STD,
        has_masks: bool = True,
    ) -> None:
        self.records = list(records)
        self.source = source
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.has_masks = has_masks

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def product_types(self) -> list[str]:
        return [r.product_type for r in self.records]

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use the backbone's per-channel ``mean`` and ``std``."""
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def subset(self, indices: Sequence[int]) -> AnomalyDataset:
        """A dataset over ``records[i] for i in indices`` sharing source and transform."""
        out = AnomalyDataset.__new__(AnomalyDataset)
        out.__dict__.update(self.__dict__)
        out.records = [self.records[i] for i in indices]
        return out

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = self.source.load_image(record)
        mask = self.source.load_mask(record, image.shape[:2]) if self.has_masks else None
        if self.has_masks and mask is None:
            mask = np.zeros(image.shape[:2], dtype=bool)
        s = self.image_size
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if x.shape[1:] != (s, s):
            x = F.interpolate(x[None], size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        x = (x - self.mean) / self.std
        m = None
        if mask is not None:
            m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
            if m.shape[1:] != (s, s):
                m = F.interpolate(m[None], size=(s, s), mode="nearest")[0]
        return Sample(image=x, mask=m, label=record.label, product_type=record.product_type,
                      path=record.path)


def collate_samples(batch: Sequence[Sample]) -> dict:
    """Stack samples into a batch dict: ``image``, ``mask`` (or None), ``label``, lists."""
    masks = [b.mask for b in batch]
    return {
        "image": torch.stack([b.image for b in batch]),
        "mask": torch.stack(masks) if all(m is not None for m in masks) else None,
        "label": torch.tensor([b.label for b in batch], dtype=torch.long),
        "product_type": [b.product_type for b in batch],
        "path": [b.path for b in batch],
    }
