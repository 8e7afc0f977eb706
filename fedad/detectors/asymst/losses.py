"""The teacher-student losses (DeSTSeg's, the documented design the abstract's "cosine-
similarity loss plus pixel-wise segmentation supervision" is read by)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """``sum_l mean_{ij} (1 - cos(T_l(x)_ij, S_l(x~)_ij))``: the student's maps of the
    (possibly defective) image ``x~`` against the teacher's of the clean ``x``."""
    return sum((1 - F.cosine_similarity(t, s, dim=1)).mean()
               for t, s in zip(teacher, student, strict=True))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) ``mean -(1 - p_t)^gamma log p_t``."""
    logp = F.logsigmoid(logits)
    lognp = F.logsigmoid(-logits)
    p = logp.exp()
    pos = -((1 - p) ** gamma) * logp
    neg = -(p**gamma) * lognp
    return (target * pos + (1 - target) * neg).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      gamma: float = 4.0) -> torch.Tensor:
    """DeSTSeg's head loss: focal + L1 between ``sigmoid(logits)`` and the mask."""
    return focal_loss(logits, target, gamma) + (torch.sigmoid(logits) - target).abs().mean()
