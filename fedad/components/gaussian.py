"""Gaussian statistics of sets of rows, combined exactly across sites.

A Gaussian per position (PaDiM, Defard et al. 2021, Eq. 1) follows from three statistics of
the ``n`` rows ``x_k`` it is fitted on: the count ``n``, the mean ``mu`` and the *centred*
scatter ``S = sum_k (x_k - mu)(x_k - mu)^T``; ``Sigma = S / (n - 1) + epsilon I``.

Two sets of statistics combine exactly by the pairwise update of Chan, Golub and LeVeque
(1979): with ``delta = mu_b - mu_a`` and ``n = n_a + n_b``,
``mu = mu_a + delta n_b / n`` and ``S = S_a + S_b + delta delta^T n_a n_b / n``.
Neither this nor :func:`position_statistics` forms ``sum x x^T - n mu mu^T``, whose
cancellation loses about ``log10(|mu|^2 / var)`` digits (the raw-moment formula lost them
wherever features sit far from zero relative to their spread).

Statistics are numpy ``float64`` dicts (``count`` ``(1,)`` int64, ``mean`` ``(P, d)``,
``scatter`` ``(P, d, d)`` or packed ``(P, d(d+1)/2)``); the scoring side
(:func:`inverse_covariance`, :func:`mahalanobis`) works in torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from fedad.errors import BankError

Stats = dict[str, np.ndarray]
ArrayLike = np.ndarray | torch.Tensor
KEYS = ("count", "mean", "scatter")


def _float64_device(device: torch.device | str | None) -> torch.device:
    """Where float64 work can run (MPS has no float64: the CPU then)."""
    device = torch.device("cpu" if device is None else device)
    return torch.device("cpu") if device.type == "mps" else device


@torch.no_grad()
def position_statistics(rows: ArrayLike, batch_size: int = 16,
                        device: torch.device | str | None = None) -> Stats:
    """``count``, ``mean`` ``(P, d)`` and centred ``scatter`` ``(P, d, d)`` of ``rows``
    ``(N, P, d)`` (``N`` samples of ``P`` positions), in float64.

    The rows are shifted by their first batch's mean ``K`` before the sums (the shifted-data
    algorithm): ``S = sum (x - K)(x - K)^T - n (mu - K)(mu - K)^T``, whose second term is
    tiny because ``K`` is close to ``mu``, so nothing cancels as in the raw moments
    ``sum x x^T - n mu mu^T``. Accumulated ``batch_size`` rows at a time, in place
    (``baddbmm``): no per-sample outer product is materialised.
    """
    rows = torch.as_tensor(rows)
    if rows.ndim != 3:
        raise ValueError(f"rows must be (N, P, d), got shape {tuple(rows.shape)}")
    dev = _float64_device(device)
    n, p, d = rows.shape
    shift = total = None
    outer = torch.zeros(p, d, d, dtype=torch.float64, device=dev)
    for start in range(0, n, batch_size):
        x = rows[start:start + batch_size].to(dev, torch.float64).permute(1, 0, 2)  # (P,B,d)
        if shift is None:
            shift = x.mean(dim=1, keepdim=True)
            total = torch.zeros(p, d, dtype=torch.float64, device=dev)
        x = (x - shift).contiguous()
        total += x.sum(dim=1)
        outer.baddbmm_(x.transpose(1, 2), x)  # (P, d, B) @ (P, B, d)
    if shift is None:
        raise ValueError("position_statistics: no rows")
    offset = total / n  # mu - K
    scatter = outer - n * offset[:, :, None] * offset[:, None, :]
    return {"count": np.array([n], dtype=np.int64),
            "mean": (shift[:, 0] + offset).cpu().numpy(), "scatter": scatter.cpu().numpy()}


def combine_statistics(stats: Sequence[Mapping[str, np.ndarray]]) -> Stats:
    """The statistics of the union of several sets' rows (float64; ``scatter`` full or
    packed, as given), by the pairwise update in the order given."""
    if not stats:
        raise BankError("no statistics to combine")
    n = 0
    mean = np.zeros_like(np.asarray(stats[0]["mean"], dtype=np.float64))
    scatter = np.zeros_like(np.asarray(stats[0]["scatter"], dtype=np.float64))
    rows, cols = np.triu_indices(mean.shape[-1])
    packed = scatter.ndim == 2

    def outer(delta: np.ndarray) -> np.ndarray:  # delta delta^T, packed like the scatter
        if packed:
            return delta[:, rows] * delta[:, cols]
        return delta[..., :, None] * delta[..., None, :]

    for s in stats:
        nb = int(np.asarray(s["count"]).reshape(-1)[0])
        mb = np.asarray(s["mean"], dtype=np.float64)
        sb = np.asarray(s["scatter"], dtype=np.float64)
        if nb == 0:
            continue
        if n == 0:
            n, mean, scatter = nb, mb.copy(), sb.copy()
            continue
        total = n + nb
        delta = mb - mean
        scatter = scatter + sb + outer(delta) * (n * nb / total)
        mean = mean + delta * (nb / total)
        n = total
    return {"count": np.array([n], dtype=np.int64), "mean": mean, "scatter": scatter}


# -- packing: only the upper triangle of a symmetric matrix travels ----------------------------
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


def pack_upper(matrices: np.ndarray, dtype: np.dtype | str = np.float64) -> np.ndarray:
    """``(P, d, d)`` symmetric -> ``(P, d(d+1)/2)`` upper triangle, row-major, in ``dtype``."""
    matrices = np.asarray(matrices)
    rows, cols = np.triu_indices(matrices.shape[-1])
    return matrices[:, rows, cols].astype(dtype)


def unpack_upper(packed: np.ndarray, d: int | None = None) -> np.ndarray:
    """``(P, d(d+1)/2)`` -> the symmetric ``(P, d, d)`` float64 matrices."""
    packed = np.asarray(packed, dtype=np.float64)
    d = packed_dim(packed.shape[-1]) if d is None else d
    rows, cols = np.triu_indices(d)
    out = np.empty((packed.shape[0], d, d), dtype=np.float64)
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out


# -- the Gaussian (PaDiM Eq. 1) and the distance (Eq. 2) ----------------------------------------
def gaussian(stats: Mapping[str, np.ndarray], epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(P, d)`` and Eq. 1's covariance ``S / (n - 1) + epsilon I`` ``(P, d, d)``
    (float64) from statistics (``scatter`` full or packed). With one row the sample
    covariance is undefined and taken as zero, leaving ``epsilon I``."""
    n = int(np.asarray(stats["count"]).reshape(-1)[0])
    if n < 1:
        raise BankError(f"gaussian: cannot fit a Gaussian to {n} rows")
    mean = np.asarray(stats["mean"], dtype=np.float64)
    scatter = np.asarray(stats["scatter"], dtype=np.float64)
    if scatter.ndim == 2:
        scatter = unpack_upper(scatter, mean.shape[-1])
    d = mean.shape[-1]
    if n > 1:
        cov = scatter / (n - 1)
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))  # exactly symmetric
    else:
        cov = np.zeros((mean.shape[0], d, d), dtype=np.float64)
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


def squared_mahalanobis(rows: torch.Tensor, mean: ArrayLike, inv_cov: torch.Tensor
                        ) -> torch.Tensor:
    """``(x - mu)^T Sigma^-1 (x - mu)`` of ``rows`` ``(P, B, d)`` (``B`` samples at each of
    ``P`` positions) to each position's Gaussian -> ``(P, B)``, in ``inv_cov``'s dtype and
    device (PaDiM's score, squared: F2PAD's Eq. 7). Differentiable in ``rows``."""
    dev, dt = inv_cov.device, inv_cov.dtype
    mu = torch.as_tensor(mean).to(dev, dt)
    if rows.shape[0] != mu.shape[0] or rows.shape[-1] != mu.shape[-1]:
        raise ValueError(f"rows of shape {tuple(rows.shape)} do not fit a Gaussian of shape "
                         f"{tuple(mu.shape)}")
    diff = (rows.to(dev, dt) - mu[:, None]).contiguous()  # bmm on a strided view is slow
    return (torch.bmm(diff, inv_cov) * diff).sum(dim=-1)


def mahalanobis(rows: torch.Tensor, mean: ArrayLike, inv_cov: torch.Tensor) -> torch.Tensor:
    """Eq. 2's distance ``sqrt((x - mu)^T Sigma^-1 (x - mu))`` of ``rows`` ``(P, B, d)`` to
    each position's Gaussian -> ``(P, B)`` (:func:`squared_mahalanobis`, rooted; the caller
    chooses ``no_grad``)."""
    return squared_mahalanobis(rows, mean, inv_cov).clamp_min(0).sqrt()
