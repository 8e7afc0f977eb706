"""Memory-bank operations: validation, byte accounting, nearest-neighbour search and the
server's K-means aggregation (paper Alg. 3), with faiss (a GPU index when faiss-gpu is
importable and CUDA is present).

A *bank* is a float32 tensor of shape ``(H, W, C)`` (the paper's ``M in R^{HxWxC}``); as a
set of features it is viewed as ``(H*W, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import faiss
import numpy as np
import torch

from fedad.errors import BankError, ConfigError


@lru_cache(maxsize=1)
def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees a GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken CUDA setups
        return False


@lru_cache(maxsize=1)
def _gpu_resources():  # pragma: no cover - needs a GPU
    return faiss.StandardGpuResources()


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def as_features(bank: torch.Tensor) -> torch.Tensor:
    """View an ``(H, W, C)`` bank (or an ``(N, C)`` feature set) as ``(H*W, C)``."""
    return bank.reshape(-1, bank.shape[-1])


def bank_nbytes(bank: torch.Tensor | np.ndarray) -> int:
    """Bytes the bank occupies (and, uncompressed, on the wire)."""
    if isinstance(bank, torch.Tensor):
        return bank.numel() * bank.element_size()
    return int(bank.nbytes)


def validate_bank(
    bank: object, who: str, shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Check an uploaded bank and return it as a float32 tensor.

    Raises:
        BankError: naming ``who`` (e.g. ``client 3``) when the bank is not an array, is not
            3-D ``(H, W, C)``, differs from the expected ``shape``, is empty, not floating
            point, or holds NaN/inf values.
    """
    if isinstance(bank, np.ndarray):
        if not np.issubdtype(bank.dtype, np.floating):
            raise BankError(f"{who}: bank dtype {bank.dtype} is not floating point")
        bank = torch.from_numpy(np.ascontiguousarray(bank))
    if not isinstance(bank, torch.Tensor):
        raise BankError(f"{who}: bank is a {type(bank).__name__}, not an array")
    if not bank.is_floating_point():
        raise BankError(f"{who}: bank dtype {bank.dtype} is not floating point")
    if bank.ndim != 3:
        raise BankError(f"{who}: bank has shape {tuple(bank.shape)}, expected (H, W, C)")
    if shape is not None and tuple(bank.shape) != tuple(shape):
        raise BankError(f"{who}: bank has shape {tuple(bank.shape)}, expected {tuple(shape)}")
    if bank.numel() == 0:
        raise BankError(f"{who}: bank is empty")
    finite = torch.isfinite(bank)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise BankError(f"{who}: bank holds {bad} non-finite values (NaN or inf)")
    return bank.to(torch.float32)


class NearestNeighbours:
    """Exact L2 nearest-neighbour search over a fixed bank (faiss ``IndexFlatL2``)."""

    def __init__(self, bank: torch.Tensor, use_gpu: bool | None = None) -> None:
        feats = _as_float32(as_features(bank))
        self.size, self.dim = feats.shape
        index = faiss.IndexFlatL2(self.dim)
        if (faiss_gpu_available() if use_gpu is None else use_gpu):  # pragma: no cover
            index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
        index.add(feats)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances and indices ``(N, k)`` of each query's ``k`` nearest features,
        nearest first."""
        if k > self.size:
            raise ConfigError(f"top_k={k} exceeds the bank size {self.size}")
        q = _as_float32(queries.reshape(-1, self.dim))
        d2, idx = self.index.search(q, k)
        dist = torch.from_numpy(np.sqrt(np.maximum(d2, 0.0)))
        return dist, torch.from_numpy(idx.astype(np.int64))


def knn(
    queries: torch.Tensor, bank: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off exact k-nearest-neighbour search; see :class:`NearestNeighbours`."""
    return NearestNeighbours(bank).search(queries, k)


def kmeans_plusplus(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with
    probability proportional to its squared distance to the nearest centre so far."""
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


def kmeans_aggregate(
    banks: Sequence[torch.Tensor],
    k: int | None = None,
    seed: int = 0,
    niter: int = 20,
    use_gpu: bool | None = None,
    init: str = "positional",
) -> torch.Tensor:
    """Aggregate client banks into a global bank by K-means (paper Alg. 3).

    The ``N`` banks of ``(H, W, C)`` are stacked into ``N*H*W`` features of ``C``; K-means
    with ``K = H*W`` (default) gives the centres, reshaped to ``(H, W, C)``.

    ``init`` chooses the starting centres, which the paper leaves open:
    ``positional`` (default) starts centre ``k`` at the clients' mean feature for position
    ``k``, so the centre stored at ``(h, w)`` stays that position's feature. Memory-reduce
    (Eq. 15-16) compares and mixes the received bank with the memory maps position by
    position; with centres in arbitrary order each rEMA step would blend unrelated features.
    ``kmeans++`` (seeded k-means++) and ``random`` (faiss's sample of points) ignore
    positions. Seeded and deterministic for a seed on the CPU.
    """
    if not banks:
        raise BankError("kmeans_aggregate: no banks to aggregate")
    h, w, c = banks[0].shape
    feats = _as_float32(torch.cat([as_features(b) for b in banks]))
    k = h * w if k is None else int(k)
    if feats.shape[0] < k:
        raise BankError(f"kmeans_aggregate: {feats.shape[0]} features for K={k} centres")
    km = faiss.Kmeans(
        c, k, niter=niter, seed=int(seed), verbose=False,
        gpu=bool(faiss_gpu_available() if use_gpu is None else use_gpu),
        min_points_per_centroid=1, max_points_per_centroid=feats.shape[0],
    )
    if init == "positional":
        if k != h * w:
            raise ConfigError(f"positional K-means init needs K = H*W = {h * w}, got {k}")
        start = torch.stack([b.to(torch.float32) for b in banks]).mean(0).reshape(k, c)
        km.train(feats, init_centroids=_as_float32(start))
    elif init == "kmeans++":
        km.train(feats, init_centroids=kmeans_plusplus(feats, k, seed))
    elif init == "random":
        km.train(feats)
    else:
        raise ConfigError(f"train.kmeans_init must be positional, kmeans++ or random, got "
                          f"{init!r}")
    centres = torch.from_numpy(np.array(km.centroids, dtype=np.float32, copy=True))
    if k == h * w:
        return centres.reshape(h, w, c)
    return centres


def average_aggregate(banks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Position-wise mean of the banks (the paper's ablation without K-means, Table III)."""
    if not banks:
        raise BankError("average_aggregate: no banks to aggregate")
    return torch.stack([b.to(torch.float32) for b in banks]).mean(dim=0)


def aggregate(banks: Sequence[torch.Tensor], method: str = "kmeans", seed: int = 0,
              niter: int = 20, init: str = "positional") -> torch.Tensor:
    """Server aggregation by ``kmeans`` (Alg. 3) or ``average`` (ablation)."""
    if method == "kmeans":
        return kmeans_aggregate(banks, seed=seed, niter=niter, init=init)
    if method == "average":
        return average_aggregate(banks)
    raise ConfigError(f"train.aggregation must be kmeans or average, got {method!r}")
