"""PaDiM's config section (``padim``), read into :class:`fedad.config.schema.RunConfig`
(a plain dataclass: layer 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


@dataclass
class PaDiMConfig:
    """PaDiM (Defard et al. 2021): a Gaussian per position over a random channel subset.

    Federated by exact statistics: count, mean and centred scatter per position in float64,
    combined by the pairwise update, so the server's Gaussian equals the centralized one up
    to rounding.
    """

    strides: list[int] = field(default_factory=lambda: [4, 8, 16])  # backbone levels used
    channels: int = 100  # size of the random channel subset (shared by every client)
    channel_seed: int = 0  # seed of that subset: every client and the server draw the same
    epsilon: float = 0.01  # covariance regularisation: Sigma + epsilon * I (paper)
    # float64: exact up to rounding; float32: half the bytes, the federated covariance then
    # 2.9e-8 off (relative to its largest entry, MTD: benchmarks/results/padim_precision.md)
    upload_dtype: str = choice("float64", "float32")
    avg_pool: bool = False  # raw layer features, as published (true: 3x3 averaged first)
