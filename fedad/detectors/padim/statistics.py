"""PaDiM's Gaussian per patch position, from exact sufficient statistics.

PaDiM (Defard et al. 2021, "PaDiM: a Patch Distribution Modeling Framework for Anomaly
Detection and Localization") models the features of position ``(i, j)`` over the normal
training images as ``N(mu_ij, Sigma_ij)`` on a random subset of ``d`` channels, with
Eq. 1 ``Sigma_ij = 1/(N-1) sum_k (x_k - mu)(x_k - mu)^T + epsilon I``, and scores a test
patch by the Mahalanobis distance of Eq. 2 ``sqrt((x - mu)^T Sigma^-1 (x - mu))``.

Both follow from the sufficient statistics ``n``, ``sum_k x_k`` and ``sum_k x_k x_k^T`` per
position, which add up exactly over clients: federated PaDiM is centralized PaDiM.

Statistics (``count``/``sum``/``outer``) are numpy ``float64`` dicts, the summary format;
the scoring side (:func:`inverse_covariance`, :func:`mahalanobis`) returns torch tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from fedad.errors import BankError, ConfigError

Stats = dict[str, np.ndarray]
ArrayLike = np.ndarray | torch.Tensor


def channel_subset(channels: int, size: int, seed: int) -> np.ndarray:
    """Sorted ``int64`` indices of ``size`` random channels out of ``channels`` (PaDiM's
    random dimensionality reduction); all channels when ``size >= channels``.

    Depends only on its arguments, so every client and the server draw the same subset.
    """
    if channels < 1 or size < 1:
        raise ConfigError(f"padim: need at least one channel (channels={channels}, "
                          f"subset size={size})")
    if size >= channels:
        return np.arange(channels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(channels, size=size, replace=False)).astype(np.int64)


def _positions_first(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(H*W, B, d)`` on the channels ``idx``."""
    b, _, h, w = x.shape
    return x.index_select(1, idx).reshape(b, idx.numel(), h * w).permute(2, 0, 1)


def _float64_device(device: torch.device | str | None) -> torch.device:
    """Where float64 work can run (MPS has no float64: the CPU then)."""
    device = torch.device("cpu" if device is None else device)
    return torch.device("cpu") if device.type == "mps" else device


@torch.no_grad()
def sufficient_statistics(features: ArrayLike, idx: ArrayLike, batch_size: int = 16,
                          device: torch.device | str | None = None) -> Stats:
    """``count`` ``int64 (1,)``, ``sum`` ``(H*W, d)`` and ``outer`` ``(H*W, d, d)`` (the sum
    over images of ``x x^T`` per position) of ``features`` ``(N, C, H, W)`` on channels ``idx``.

    Accumulated in float64, ``batch_size`` images at a time, in place (``baddbmm``): no
    per-image outer product is ever materialised.
    """
    features = torch.as_tensor(features)
    if features.ndim != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    dev = _float64_device(device)
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=features.device)
    n, _, h, w = features.shape
    d = index.numel()
    total = torch.zeros(h * w, d, dtype=torch.float64, device=dev)
    outer = torch.zeros(h * w, d, d, dtype=torch.float64, device=dev)
    for start in range(0, n, batch_size):
        x = _positions_first(features[start:start + batch_size], index)
        x = x.to(dev, torch.float64).contiguous()  # (P, B, d)
        total += x.sum(dim=1)
        outer.baddbmm_(x.transpose(1, 2), x)  # (P, d, B) @ (P, B, d)
    return {"count": np.array([n], dtype=np.int64), "sum": total.cpu().numpy(),
            "outer": outer.cpu().numpy()}


def add_statistics(stats: Sequence[Mapping[str, np.ndarray]]) -> Stats:
    """Exact sum of several clients' statistics (``outer`` full or packed, as given)."""
    if not stats:
        raise BankError("no statistics to add")
    count = np.zeros(1, dtype=np.int64)
    total = np.zeros_like(np.asarray(stats[0]["sum"], dtype=np.float64))
    outer = np.zeros_like(np.asarray(stats[0]["outer"], dtype=np.float64))
    for s in stats:
        count += np.asarray(s["count"], dtype=np.int64).reshape(1)
        total += np.asarray(s["sum"], dtype=np.float64)
        outer += np.asarray(s["outer"], dtype=np.float64)
    return {"count": count, "sum": total, "outer": outer}


# -- packing: only the upper triangle of the symmetric outer products travels ------------------
def packed_size(d: int) -> int:
    """Values in the upper triangle (with the diagonal) of a ``d x d`` matrix."""
    return d * (d + 1) // 2


def packed_dim(m: int) -> int:
    """``d`` such that ``d (d + 1) / 2 == m``."""
    d = int(round((np.sqrt(8 * m + 1) - 1) / 2))
    if packed_size(d) != m:
        raise ValueError(f"{m} values are not the upper triangle of a square matrix")
    return d


def diagonal_positions(d: int) -> np.ndarray:
    """Where the diagonal entries sit in a packed upper triangle (row-major)."""
    rows, cols = np.triu_indices(d)
    return np.flatnonzero(rows == cols)


def pack_upper(outer: np.ndarray, dtype: np.dtype | str = np.float64) -> np.ndarray:
    """``(P, d, d)`` symmetric -> ``(P, d(d+1)/2)`` upper triangle, row-major, in ``dtype``."""
    outer = np.asarray(outer)
    rows, cols = np.triu_indices(outer.shape[-1])
    return outer[:, rows, cols].astype(dtype)


def unpack_upper(packed: np.ndarray, d: int | None = None) -> np.ndarray:
    """``(P, d(d+1)/2)`` -> the symmetric ``(P, d, d)`` float64 matrices."""
    packed = np.asarray(packed, dtype=np.float64)
    d = packed_dim(packed.shape[-1]) if d is None else d
    rows, cols = np.triu_indices(d)
    out = np.empty((packed.shape[0], d, d), dtype=np.float64)
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out


# -- the Gaussian (Eq. 1) and the distance (Eq. 2) ---------------------------------------------
def gaussian(stats: Mapping[str, np.ndarray], epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(P, d)`` and PaDiM's Eq. 1 covariance ``(P, d, d)`` (float64) from statistics
    (``outer`` full or packed).

    Unbiased: ``(outer - n mu mu^T) / (n - 1) + epsilon I``. With one image the sample
    covariance is undefined and taken as zero, leaving ``epsilon I``.
    """
    n = int(np.asarray(stats["count"]).reshape(-1)[0])
    if n < 1:
        raise BankError(f"padim: cannot fit a Gaussian to {n} images")
    total = np.asarray(stats["sum"], dtype=np.float64)
    outer = np.asarray(stats["outer"], dtype=np.float64)
    if outer.ndim == 2:
        outer = unpack_upper(outer, total.shape[-1])
    mean = total / n
    d = total.shape[-1]
    if n > 1:
        cov = (outer - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))  # exactly symmetric
    else:
        cov = np.zeros((total.shape[0], d, d), dtype=np.float64)
    cov[:, np.arange(d), np.arange(d)] += epsilon
    return mean, cov


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run batched small-matrix LAPACK calls on one CPU thread: they gain nothing from
    more, and a multi-threaded BLAS on a busy machine slows them ~20x (measured)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def inverse_covariance(cov: ArrayLike, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """``Sigma^-1`` ``(P, d, d)`` by Cholesky in float64, returned in ``dtype`` on ``device``.

    A position whose covariance is not positive definite (only possible with
    ``epsilon = 0``) falls back to the pseudo-inverse.
    """
    dev = _float64_device(device)
    c = torch.as_tensor(cov).to(dev, torch.float64)
    with _one_cpu_thread(dev):
        chol, info = torch.linalg.cholesky_ex(c)
        bad = info != 0
        if bool(bad.any()):
            chol[bad] = torch.eye(c.shape[-1], dtype=c.dtype, device=dev)  # placeholder
        inv = torch.cholesky_inverse(chol)
        if bool(bad.any()):
            inv[bad] = torch.linalg.pinv(c[bad], hermitian=True)
    inv = 0.5 * (inv + inv.transpose(1, 2))
    return inv.to(torch.device("cpu" if device is None else device), dtype)


@torch.no_grad()
def mahalanobis(features: ArrayLike, idx: ArrayLike, mean: ArrayLike, inv_cov: torch.Tensor,
                batch_size: int = 32) -> torch.Tensor:
    """PaDiM's Eq. 2 distance of every patch of ``features`` ``(N, C, H, W)`` to its
    position's Gaussian -> ``(N, H, W)``, computed in ``inv_cov``'s dtype and device."""
    features = torch.as_tensor(features)
    n, _, h, w = features.shape
    dev, dt = inv_cov.device, inv_cov.dtype
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=features.device)
    mu = torch.as_tensor(mean).to(dev, dt)
    if mu.shape != (h * w, index.numel()) or inv_cov.shape[0] != h * w:
        raise ValueError(f"Gaussian of shape {tuple(mu.shape)} does not fit features "
                         f"{tuple(features.shape)} on {index.numel()} channels")
    out = []
    for start in range(0, n, batch_size):
        x = _positions_first(features[start:start + batch_size], index).to(dev, dt)
        diff = (x - mu[:, None]).contiguous()  # bmm on a strided view is ~100x slower
        sq = (torch.bmm(diff, inv_cov) * diff).sum(dim=-1)  # (P, B)
        out.append(sq.clamp_min(0).sqrt().T.reshape(-1, h, w))
    return torch.cat(out)
