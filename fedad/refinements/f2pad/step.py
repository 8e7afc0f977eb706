"""Sec. III-D's adaptive step (Eq. 15) and the clipped direction."""

from __future__ import annotations

import torch

GAMMA0 = 1.0
CLIP = 0.03  # the direction is clipped at 0.03 (element-wise: the paper does not say how)
# Eq. 15 divides by |a|, which is 0 wherever n = x (all of n's start outside the base mask):
# the step is capped as if |a| were one 8-bit grey level in ImageNet-normalised units
# (1/255 over the smallest channel std, 0.225). The paper is silent; chosen a priori.
A_FLOOR = (1.0 / 255.0) / 0.225


def step_sizes(x: torch.Tensor, n: torch.Tensor, gamma0: float = GAMMA0,
               floor: float = A_FLOOR) -> torch.Tensor:
    """Eq. 15, per pixel and channel: ``gamma0 / max(|x - n|, floor)``."""
    return gamma0 / (x - n).abs().clamp_min(floor)


def clipped(direction: torch.Tensor, clip: float = CLIP) -> torch.Tensor:
    """The direction with every element clipped to ``[-clip, clip]``."""
    return direction.clamp(-clip, clip)
