"""Metric loss (paper Eq. 12).

``l(M, M') = 1/(HWK) * sum_{h,w} sum_k max(0, ||m_hw - m'_k||_2 - th)`` where ``m'_k`` are
the ``K`` nearest features of the bank ``M'`` to ``m_hw``. The neighbours are searched
without gradient; the distances to them carry the gradient.
"""

from __future__ import annotations

import torch


def positions(memory: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` memory features as ``(B*H*W, C)`` patch features."""
    b, c, h, w = memory.shape
    return memory.permute(0, 2, 3, 1).reshape(b * h * w, c)


def metric_loss(
    features: torch.Tensor,
    bank: torch.Tensor,
    neighbour_idx: torch.Tensor,
    threshold: float = 0.01,
) -> torch.Tensor:
    """Eq. 12 averaged over every patch and neighbour.

    Args:
        features: ``(N, C)`` patch features ``m_hw`` (with gradient).
        bank: ``(D, C)`` bank features ``m'``.
        neighbour_idx: ``(N, K)`` indices into ``bank`` of each patch's K nearest features.
        threshold: ``th``: distances below it cost nothing (mitigates overfitting).
    """
    neighbours = bank[neighbour_idx]  # (N, K, C)
    dist = torch.linalg.vector_norm(features[:, None, :] - neighbours, dim=-1)
    return torch.clamp(dist - threshold, min=0.0).mean()
