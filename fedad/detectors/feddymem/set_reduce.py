"""Memory-reduce as a *set* (``feddymem.reduce=coreset|kmeans``): a switch beyond the paper.

The paper's memory-reduce (Eq. 14-16, :mod:`.reduce`) averages the clients' memory maps
position by position into one ``(H, W, C)`` map. On real data whose images are neither
aligned nor alike (MTD: tiles under six acquisition conditions) every position's mean is
nearly the same vector, and averages lose exactly the rare normal patches whose distance
decides a normal image's score (the image score is the map's maximum): measured in
``method-notes.md``, the position-wise mean bank scores I-AUROC 0.69-0.76 on MTD where a
coreset of the same features scores 0.978.

Here the client summarises *all* its memory features ``(N*H*W, C)`` into ``K``
representatives (``K = H*W`` by default: the paper's upload size):

* ``coreset``: a greedy k-center coreset (PatchCore Alg. 1): keeps rare patches by design;
* ``kmeans``: K-means centres with Eq. 15's dynamic weights as sample weights, each patch
  weighted by its image's ``w_i = 1 / ||M^i - M^{t-1}||_2``. For a set bank the distance
  of ``M^i`` to the previous bank pairs each memory feature with its *nearest* bank feature
  instead of the one at the same position.

Eq. 16's rEMA then mixes each representative with its nearest feature of the received
bank (``feddymem.rema``), the set analogue of mixing position ``(h, w)`` with position
``(h, w)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np
import torch

from fedad.components.coreset import greedy_coreset
from fedad.components.knn import NearestNeighbours
from fedad.errors import BankError, ConfigError

SET_REDUCES = ("coreset", "kmeans")
# K-means trains on at most this many samples per centre (a seeded subsample, faiss-style).
KMEANS_POINTS_PER_CENTRE = 64


def set_weights(memories: torch.Tensor, previous: NearestNeighbours | None,
                eps: float = 1e-12) -> torch.Tensor:
    """Eq. 15 for a set bank: one weight per image of ``(B, H, W, C)`` memories,
    ``1 / sqrt(sum_hw ||m_hw - nn(m_hw)||^2)`` with ``nn`` the nearest feature of the
    previous bank; all ones without a previous bank (round 0)."""
    b = memories.shape[0]
    if previous is None:
        return torch.ones(b, dtype=torch.float64)
    dist, _ = previous.search(memories.reshape(-1, memories.shape[-1]), 1)
    norms = dist.to(torch.float64).reshape(b, -1).square().sum(1).sqrt()
    return 1.0 / norms.clamp_min(eps)


def weighted_kmeans(rows: torch.Tensor, weights: torch.Tensor, k: int, seed: int = 0,
                    niter: int = 20) -> torch.Tensor:
    """``k`` K-means centres of ``(N, C)`` rows with per-row sample ``weights`` (faiss),
    trained on a seeded subsample of at most ``KMEANS_POINTS_PER_CENTRE * k`` rows."""
    n, c = rows.shape
    if n < k:
        raise BankError(f"kmeans reduce: {n} memory features for K={k} centres")
    x = np.ascontiguousarray(rows.numpy(), dtype=np.float32)
    w = np.ascontiguousarray(weights.numpy(), dtype=np.float32)
    cap = KMEANS_POINTS_PER_CENTRE * k
    if n > cap:
        keep = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
        x, w = x[keep], w[keep]
    km = faiss.Kmeans(c, k, niter=niter, seed=int(seed), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=x.shape[0])
    km.train(x, weights=w)
    return torch.from_numpy(np.array(km.centroids, dtype=np.float32, copy=True))


def matched_rema(representatives: torch.Tensor, previous: torch.Tensor, round_t: int
                 ) -> torch.Tensor:
    """Eq. 16 for a set bank: ``a * r + (1 - a) * nn(r)`` with ``a = 1/(t+1)`` and
    ``nn(r)`` the nearest feature of the previous bank to each representative ``r``."""
    alpha = 1.0 / (round_t + 1)
    _, idx = NearestNeighbours(previous).search(representatives, 1)
    matched = previous.reshape(-1, previous.shape[-1])[idx[:, 0]]
    return alpha * representatives + (1.0 - alpha) * matched.to(representatives)


def set_reduce(batches: Iterable[torch.Tensor], size: int, method: str,
               previous: torch.Tensor | None, round_t: int, rema: bool = True,
               seed: int = 0, niter: int = 20, projection_dim: int = 128) -> torch.Tensor:
    """``size`` representatives ``(size, C)`` of every memory feature in ``batches`` of
    ``(B, H, W, C)`` (see the module docstring), float32; all of them (a coreset of
    itself, in coreset order) when a client holds fewer than ``size``."""
    if method not in SET_REDUCES:
        raise ConfigError(f"set reduce must be one of {SET_REDUCES}, got {method!r}")
    if round_t > 0 and previous is None:
        raise BankError(f"memory-reduce at round {round_t} needs the previous bank")
    index = (NearestNeighbours(previous) if method == "kmeans" and round_t > 0 else None)
    rows, weights = [], []
    for batch in batches:
        batch = batch.detach().to(torch.float32)
        rows.append(batch.reshape(-1, batch.shape[-1]))
        if method == "kmeans":
            per_image = set_weights(batch, index)
            weights.append(per_image.repeat_interleave(batch[0, ..., 0].numel()))
    if not rows:
        raise BankError("memory-reduce: no memory features were given")
    allrows = torch.cat(rows)
    size = min(size, allrows.shape[0])  # a small client keeps every memory feature
    if method == "coreset":
        reps = allrows[greedy_coreset(allrows, size, projection_dim, seed)]
    else:
        reps = weighted_kmeans(allrows, torch.cat(weights), size, seed, niter)
    if round_t > 0 and rema:
        reps = matched_rema(reps, previous, round_t)
    return reps.contiguous()
