"""Sec. III-D's optimiser: minimise ``F(n)`` (Eq. 12) over the pixels of a region only, along
the locally shared direction (Eq. 13-14), clipped, with Adan's update at the adaptive
per-pixel step of Eq. 15, pixels kept in their valid range.

Adan is ``adan_pytorch.Adan`` at its recommended settings (betas 0.02/0.08/0.01, eps 1e-8).
Eq. 15 makes the step per pixel and channel: the optimiser's learning rate is set, before
every step, to the tensor ``lr * gamma0 / max(|x - n|, floor)`` (zero outside the region);
the package's update is element-wise in it (``tests/test_f2pad.py`` checks a constant
tensor equals the scalar rate). Where the paper is silent, fixed a priori:

* the valid range is enforced by projection (each pixel clamped to what an 8-bit image
  can hold after the backbone's normalisation) instead of an unweighted penalty;
* stopping: the loss decreased by less than ``tolerance`` (paper: 0.1 for PaDiM, 0.05
  otherwise) on ``patience`` subsequent iterations after at least ``min_iterations``, or
  ``max_iterations``; Adan's first iterations move little and its loss is not monotone,
  so a single small decrease does not stop it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from adan_pytorch import Adan

from fedad.refinements.f2pad.config import F2PADConfig
from fedad.refinements.f2pad.sharing import shared_direction, sharing_weights
from fedad.refinements.f2pad.step import clipped, step_sizes

Objective = Callable[[torch.Tensor], torch.Tensor]  # n (3, H, W) -> F(n)


@dataclass
class Solution:
    """The estimate ``n`` ``(3, H, W)``, iterations run, the last finite loss and whether
    it stopped on a non-finite loss (``diverged``: ``n`` is then the last finite iterate)."""

    n: torch.Tensor
    iterations: int
    loss: float
    diverged: bool = False
    history: list[float] = field(default_factory=list)  # the loss at every iteration


def _box(region: torch.Tensor, pad: int) -> tuple[slice, slice]:
    """The rows and columns of ``region`` ``(H, W)``'s bounding box, ``pad`` pixels wider."""
    ys, xs = region.nonzero(as_tuple=True)
    h, w = region.shape
    return (slice(max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, h)),
            slice(max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, w)))


def solve(x: torch.Tensor, n0: torch.Tensor, region: torch.Tensor, objective: Objective,
          cfg: F2PADConfig, tolerance: float, floor: torch.Tensor, low: torch.Tensor,
          high: torch.Tensor) -> Solution:
    """Minimise ``objective`` over the pixels of ``n`` inside ``region`` ``(H, W)`` (bool),
    from ``n0``; every pixel outside keeps ``n0``'s value exactly. ``floor``, ``low`` and
    ``high`` are ``(3, 1, 1)``: one grey level and the valid range, in normalised units."""
    inside = region[None].to(x.dtype)
    box = _box(region, cfg.k_s)
    weights = sharing_weights(x[(slice(None), *box)], cfg.k_s, cfg.sigma0, cfg.sigma1)
    n = n0.detach().clone().requires_grad_(True)
    keep = n0.detach().clone()
    opt = Adan([n], lr=cfg.lr)
    best = n.detach().clone()
    last, calm, it = float("nan"), 0, 0
    history: list[float] = []
    for it in range(1, cfg.max_iterations + 1):
        loss = objective(n)
        value = float(loss.detach())
        history.append(value)
        if not torch.isfinite(loss):
            return Solution(best, it, last, diverged=True, history=history)
        best, (grad,) = n.detach().clone(), torch.autograd.grad(loss, n)
        direction = torch.zeros_like(grad)
        direction[(slice(None), *box)] = shared_direction(grad[(slice(None), *box)], weights,
                                                          cfg.k_s)
        n.grad = clipped(direction, cfg.clip) * inside
        opt.param_groups[0]["lr"] = cfg.lr * step_sizes(x, n.detach(), cfg.gamma0,
                                                        floor) * inside
        opt.step()
        with torch.no_grad():
            n.copy_(torch.where(inside > 0, torch.maximum(torch.minimum(n, high), low), keep))
        calm = calm + 1 if last - value < tolerance else 0  # nan - value: not a decrease
        last = value
        if it >= cfg.min_iterations and calm >= cfg.patience:
            break
    return Solution(n.detach(), it, last, history=history)
