"""Metric loss (paper Eq. 12).

``l(M, M') = 1/(HWK) * sum_{h,w} sum_k max(0, ||m_hw - m'_k||_2 - th)`` where ``m'_k`` are
the ``K`` nearest features of the bank ``M'`` to ``m_hw``. The neighbours are searched
without gradient; the distances to them carry the gradient.
"""

from __future__ import annotations

import torch

from fedad.components.knn import NearestNeighbours


def positions(memory: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` memory features as ``(B*H*W, C)`` patch features."""
    b, c, h, w = memory.shape
    return memory.permute(0, 2, 3, 1).reshape(b * h * w, c)


def metric_loss(
    features: torch.Tensor,
    bank: torch.Tensor,
    neighbour_idx: torch.Tensor,
    threshold: float = 0.01,
    squared: bool = False,
) -> torch.Tensor:
    """Eq. 12 averaged over every patch and neighbour (``squared``: CFA's form,
    ``max(0, ||m_hw - m'_k||^2 - th^2)``, beyond the paper: ``feddymem.distance=squared``).

    Args:
        features: ``(N, C)`` patch features ``m_hw`` (with gradient).
        bank: ``(D, C)`` bank features ``m'``.
        neighbour_idx: ``(N, K)`` indices into ``bank`` of each patch's K nearest features.
        threshold: ``th``: distances below it cost nothing (mitigates overfitting).
    """
    neighbours = bank[neighbour_idx]  # (N, K, C)
    diff = features[:, None, :] - neighbours
    if squared:
        return torch.clamp(diff.square().sum(-1) - threshold ** 2, min=0.0).mean()
    dist = torch.linalg.vector_norm(diff, dim=-1)
    return torch.clamp(dist - threshold, min=0.0).mean()


def repulsive_loss(features: torch.Tensor, bank: torch.Tensor, negative_idx: torch.Tensor,
                   margin: float, squared: bool = False) -> torch.Tensor:
    """CFA's repulsive term (Lee et al. 2022, Eq. 5), beyond the paper: a switch
    (``feddymem.repulsion``) against the head collapsing every patch, anomalous ones included,
    onto the bank.

    ``mean max(0, margin - ||m_hw - m'_j||_2)`` over the ``J`` bank features ranked
    ``K+1..K+J`` nearest to each patch (``negative_idx``, ``(N, J)``): a patch may sit within
    ``th`` of its ``K`` nearest features (Eq. 12) but must keep the next ``J`` at least
    ``margin`` away, so the bank's neighbourhoods stay distinct. Zero when every negative
    is beyond the margin. ``squared``: ``max(0, margin^2 - ||m_hw - m'_j||^2)`` (CFA's form).
    """
    negatives = bank[negative_idx]  # (N, J, C)
    diff = features[:, None, :] - negatives
    if squared:
        return torch.clamp(margin ** 2 - diff.square().sum(-1), min=0.0).mean()
    dist = torch.linalg.vector_norm(diff, dim=-1)
    return torch.clamp(margin - dist, min=0.0).mean()


def anchor_loss(memory: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``mean_hw ||m_hw - m0_hw||^2``: how far the head's memory features ``(N, C)`` moved
    from those of the head as drawn, ``start`` (beyond the paper: ``feddymem.anchor``)."""
    return (memory - start).square().sum(-1).mean()


def bank_spacing(bank: torch.Tensor, sample: int = 4096, seed: int = 0) -> float:
    """Median distance of a bank feature to its nearest *other* bank feature (on a seeded
    sample of at most ``sample`` features): the scale of the repulsive margin and of the
    relative threshold (``feddymem.threshold_scale``)."""
    feats = bank.reshape(-1, bank.shape[-1]).to(torch.float32)
    if feats.shape[0] < 2:
        return 0.0
    rows = feats
    if feats.shape[0] > sample:
        g = torch.Generator().manual_seed(seed)
        rows = feats[torch.randperm(feats.shape[0], generator=g)[:sample]]
    dist, _ = NearestNeighbours(feats).search(rows, 2)
    return float(dist[:, 1].median())
