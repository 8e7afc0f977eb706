"""Sets of feature rows: the one shape every shared component works on.

A memory bank ``(H, W, C)``, a coreset ``(M, C)`` and a batch of patch features
``(N, C, H, W)`` seen position by position are all sets of ``C``-dimensional rows.
"""

from __future__ import annotations

import numpy as np
import torch


def as_rows(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``(..., C)`` as ``(prod(...), C)`` (a view where possible): an ``(H, W, C)`` bank as
    its ``H*W`` features."""
    return x.reshape(-1, x.shape[-1])


def patch_rows(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` features as float32 patch rows ``(N*H*W, C)`` on the CPU, image by
    image, position by position (row-major)."""
    x = features.detach().to("cpu", torch.float32)
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).contiguous()


def row_moments(rows: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over the rows of ``(..., C)`` features, ``(2C,)``: a
    descriptor of a bank (a far-shifted bank moves the mean, a scaled one the spread)."""
    x = np.asarray(rows, dtype=np.float64).reshape(-1, np.shape(rows)[-1])
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


def position_rows(features: torch.Tensor, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` features on the channels ``idx`` as ``(N, H*W, d)`` rows (sample,
    position, channel): what per-position Gaussian statistics are taken over (PaDiM)."""
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=features.device)
    n, _, h, w = features.shape
    return features.index_select(1, index).reshape(n, index.numel(), h * w).transpose(1, 2)
