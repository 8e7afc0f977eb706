"""K-means on a set of rows (faiss; a GPU index when faiss-gpu is importable and CUDA is
present), with the starting centres chosen by the caller, by seeded k-means++ (Arthur &
Vassilvitskii 2007) or by faiss's own sample of points. Seeded and deterministic for a seed
on the CPU."""

from __future__ import annotations

import faiss
import numpy as np
import torch

from fedad.components.knn import as_float32, faiss_gpu_available
from fedad.errors import BankError, ConfigError

INITS = ("kmeans++", "random")


def kmeans_plusplus(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding: each new centre is drawn with probability proportional to its
    squared distance to the nearest centre so far; ``(k, C)`` float32 rows of ``feats``."""
    x = np.ascontiguousarray(feats, dtype=np.float32)
    n = x.shape[0]
    rng = np.random.default_rng(int(seed))
    sq = np.einsum("ij,ij->i", x, x)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = np.maximum(sq - 2.0 * (x @ x[chosen[0]]) + sq[chosen[0]], 0.0)
    for j in range(1, k):
        cum = np.cumsum(d2, dtype=np.float64)
        if cum[-1] <= 0:  # fewer distinct points than k: take unused points in order
            unused = np.setdiff1d(np.arange(n), chosen[:j])
            chosen[j:] = unused[: k - j]
            break
        i = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        chosen[j] = i
        np.minimum(d2, np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0), out=d2)
    return np.ascontiguousarray(x[chosen])


def kmeans(rows: torch.Tensor | np.ndarray, k: int, seed: int = 0, niter: int = 20,
           init: str | np.ndarray | torch.Tensor = "kmeans++",
           use_gpu: bool | None = None) -> torch.Tensor:
    """``k`` K-means centres ``(k, C)`` (float32) of ``rows`` ``(N, C)``.

    ``init``: ``kmeans++`` (seeded), ``random`` (faiss's seeded sample of points) or the
    starting centres themselves ``(k, C)``.

    Raises:
        BankError: fewer rows than centres.
        ConfigError: an unknown ``init``.
    """
    feats = as_float32(rows)
    n, c = feats.shape
    k = int(k)
    if n < k:
        raise BankError(f"kmeans: {n} rows for K={k} centres")
    km = faiss.Kmeans(c, k, niter=niter, seed=int(seed), verbose=False,
                      gpu=bool(faiss_gpu_available() if use_gpu is None else use_gpu),
                      min_points_per_centroid=1, max_points_per_centroid=n)
    if isinstance(init, str):
        if init == "kmeans++":
            km.train(feats, init_centroids=kmeans_plusplus(feats, k, seed))
        elif init == "random":
            km.train(feats)
        else:
            raise ConfigError(f"kmeans init must be one of {', '.join(INITS)} or starting "
                              f"centres, got {init!r}")
    else:
        start = as_float32(init)
        if start.shape != (k, c):
            raise ConfigError(f"kmeans: starting centres of shape {start.shape}, expected "
                              f"{(k, c)}")
        km.train(feats, init_centroids=start)
    return torch.from_numpy(np.array(km.centroids, dtype=np.float32, copy=True))
