"""FedDyMem's server step (paper Alg. 3): the clients' ``(H, W, C)`` banks into one global
bank by K-means with ``K = H*W`` centres, or by the position-wise average (Table III's
ablation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedad.components.kmeans import INITS, kmeans
from fedad.components.rows import as_rows
from fedad.errors import BankError, ConfigError

KMEANS_INITS = ("positional", *INITS)


def kmeans_aggregate(banks: Sequence[torch.Tensor], seed: int = 0, niter: int = 20,
                     init: str = "positional", use_gpu: bool | None = None) -> torch.Tensor:
    """Alg. 3: the ``N`` banks of ``(H, W, C)`` stacked into ``N*H*W`` features, K-means
    with ``K = H*W``, the centres reshaped to ``(H, W, C)``.

    ``init`` chooses the starting centres, which the paper leaves open:
    ``positional`` (default) starts centre ``k`` at the clients' mean feature for position
    ``k``, so the centre stored at ``(h, w)`` stays that position's feature. Memory-reduce
    (Eq. 15-16) compares and mixes the received bank with the memory maps position by
    position; with centres in arbitrary order each rEMA step would blend unrelated features.
    ``kmeans++`` (seeded k-means++) and ``random`` (faiss's sample of points) ignore
    positions.
    """
    if not banks:
        raise BankError("kmeans_aggregate: no banks to aggregate")
    if init not in KMEANS_INITS:
        raise ConfigError(f"feddymem.kmeans_init must be one of {', '.join(KMEANS_INITS)}, got "
                          f"{init!r}")
    h, w, c = banks[0].shape
    rows = torch.cat([as_rows(b.to(torch.float32)) for b in banks])
    start: str | torch.Tensor = init
    if init == "positional":
        start = torch.stack([b.to(torch.float32) for b in banks]).mean(0).reshape(h * w, c)
    return kmeans(rows, h * w, seed=seed, niter=niter, init=start,
                  use_gpu=use_gpu).reshape(h, w, c)


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
    raise ConfigError(f"feddymem.aggregation must be kmeans or average, got {method!r}")
