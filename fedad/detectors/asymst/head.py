"""The segmentation head on the teacher-student discrepancy (DeSTSeg's): its input is, per
level, ``-T_hat * S_hat`` (channel-wise product of the L2-normalised maps of the same,
possibly defective, image; its channel sum is minus the cosine similarity), upsampled to
the finest level and concatenated; two 3x3 conv-BN-ReLU layers (the second dilated by 2, a
small stand-in for DeSTSeg's ASPP, chosen a priori for 2 cores) and a 1x1 to one logit per
position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def discrepancy(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """``concat_l up(-T_hat_l * S_hat_l)`` at the first level's size ``(B, sum C_l, H, W)``."""
    size = teacher[0].shape[-2:]
    parts = []
    for t, s in zip(teacher, student, strict=True):
        p = -F.normalize(t, dim=1) * F.normalize(s, dim=1)
        parts.append(p if p.shape[-2:] == size else
                     F.interpolate(p, size=size, mode="bilinear", align_corners=False))
    return torch.cat(parts, dim=1)


def cosine_map(teacher: list[torch.Tensor], student: list[torch.Tensor],
               how: str = "product") -> torch.Tensor:
    """The map of a teacher-student pair without a head (the ``seg_head=false`` ablation)
    ``(B, H, W)`` at the first level's size: ``prod_l up(1 - cos(T_l, S_l))`` (DeSTSeg's
    de-st map, ``how="product"``) or ``sum_l`` (``how="sum"``)."""
    size = teacher[0].shape[-2:]
    out = None
    for t, s in zip(teacher, student, strict=True):
        d = 1 - F.cosine_similarity(t, s, dim=1)[:, None]
        d = d if d.shape[-2:] == size else F.interpolate(d, size=size, mode="bilinear",
                                                          align_corners=False)
        out = d if out is None else (out * d if how == "product" else out + d)
    return out[:, 0]


class SegmentationHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, H, W)``."""
        return self.net(x)[:, 0]
