"""Maximum mean discrepancy between two samples (FedPHP's representation distillation)."""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared Euclidean distances between the rows of ``x`` and of ``y``."""
    return (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)


def mmd(x: torch.Tensor, y: torch.Tensor,
        scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """The biased estimate of MMD^2 between the rows of ``x`` ``(n, d)`` and ``y``
    ``(m, d)`` under a sum of RBF kernels ``exp(-d^2 / (s h))``, ``h`` the median of the
    pooled squared distances (the median heuristic, held constant) and ``s`` each of
    ``scales``: ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``, zero when the samples
    are equal, positive otherwise.

    PFLlib's FedPHP uses fixed bandwidths (10, 15, 20, 50) sized for its classifiers'
    features; a scale-free bandwidth is fixed here instead (a priori), since a detector's
    representation has no set scale.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd needs (n, d) and (m, d) samples, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    dxx, dyy, dxy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    h = torch.cat([dxx.flatten(), dyy.flatten(), dxy.flatten()]).detach().median()
    h = h.clamp_min(torch.finfo(x.dtype).eps)
    total = x.new_zeros(())
    for s in scales:
        total = total + (torch.exp(-dxx / (s * h)).mean() + torch.exp(-dyy / (s * h)).mean()
                         - 2 * torch.exp(-dxy / (s * h)).mean())
    return total
