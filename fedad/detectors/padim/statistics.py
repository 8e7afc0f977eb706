"""PaDiM's view of the frozen features: a random channel subset, position by position.

PaDiM (Defard et al. 2021) models the features of position ``(i, j)`` over the normal
training images as ``N(mu_ij, Sigma_ij)`` on a random subset of ``d`` channels (Eq. 1) and
scores a test patch by its Mahalanobis distance (Eq. 2). The Gaussian statistics and their
exact combination across sites are shared components (:mod:`fedad.components.gaussian`);
what is PaDiM's own is which channels it reads and how features become rows.
"""

from __future__ import annotations

import numpy as np

from fedad.components.rows import position_rows  # noqa: F401 - PaDiM's rows
from fedad.errors import ConfigError


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
