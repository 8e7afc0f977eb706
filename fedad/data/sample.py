"""What a dataset is made of: sample records (metadata) and loaded samples (tensors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NORMAL = 0
ANOMALOUS = 1


@dataclass(frozen=True)
class SampleRecord:
    """One image of a dataset, before loading.

    Attributes:
        path: source path of the image (for generated data a stable pseudo-path such as
            ``textures:brick/test/scratch/007``).
        label: ``NORMAL`` (0) or ``ANOMALOUS`` (1).
        product_type: the product type / domain the image belongs to (e.g. ``brick``,
            ``exp3``, ``carpet``); partitioners split by it.
        defect_type: ``good`` for normal images, else the defect's name.
        mask_path: path of the pixel mask, or ``None`` (normal images, image-level-only sets).
        key: the image's name independent of where the dataset lies: its path relative to
            the dataset root (set by :func:`~fedad.data.factory.build_dataset`); empty for
            generated data, whose pseudo-path is already such a name.
    """

    path: str
    label: int
    product_type: str
    defect_type: str = "good"
    mask_path: str | None = None
    key: str = ""

    @property
    def is_normal(self) -> bool:
        return self.label == NORMAL

    @property
    def name(self) -> str:
        """What seeded per-image draws (held-out images, synthetic defects) are drawn from,
        so they do not change when the data move to another folder or machine."""
        return self.key or self.path


@dataclass
class Sample:
    """A loaded, resized and normalised sample as a dataset returns it.

    Attributes:
        image: float tensor ``(3, S, S)`` normalised for the backbone.
        mask: float tensor ``(1, S, S)`` in {0, 1}, or ``None`` when the image has no mask.
            Normal images without a mask file get an all-zero mask when the dataset has
            pixel annotations at all (``has_masks``).
        label: 0 normal, 1 anomalous.
        product_type: see :class:`SampleRecord`.
        path: source path.
    """

    image: torch.Tensor
    mask: torch.Tensor | None
    label: int
    product_type: str
    path: str
