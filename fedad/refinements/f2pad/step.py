"""Sec. III-D's adaptive step (Eq. 15) and the clipped direction."""

from __future__ import annotations

from collections.abc import Sequence

import torch

GAMMA0 = 1.0
CLIP = 0.03  # the direction is clipped at 0.03 (element-wise: the paper does not say how)


def grey_level(std: Sequence[float]) -> torch.Tensor:
    """One 8-bit grey level per channel in the backbone's normalised units, ``(3, 1, 1)``:
    ``(1 / 255) / std``."""
    return (1.0 / 255.0) / torch.tensor([float(s) for s in std]).view(-1, 1, 1)


def step_sizes(x: torch.Tensor, n: torch.Tensor, gamma0: float = GAMMA0,
               floor: torch.Tensor | float = 1.0 / 255.0) -> torch.Tensor:
    """Eq. 15, per pixel and channel: ``gamma0 / max(|x - n|, floor)``.

    Eq. 15 divides by ``|a|``, which is 0 wherever ``n = x`` (every pixel outside the
    inpainted base mask at the start): the paper is silent, so a priori the step is capped
    as if ``|a|`` were one grey level of the input (:func:`grey_level`)."""
    return gamma0 / torch.maximum((x - n).abs(), torch.as_tensor(floor, dtype=x.dtype))


def clipped(direction: torch.Tensor, clip: float = CLIP) -> torch.Tensor:
    """The direction with every element clipped to ``[-clip, clip]``."""
    return direction.clamp(-clip, clip)
