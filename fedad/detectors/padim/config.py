"""PaDiM's config section (``padim``), read into :class:`fedad.config.schema.RunConfig`
(a plain dataclass: layer 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


@dataclass
class PaDiMConfig:
    """PaDiM (Defard et al. 2021): a Gaussian per position over a random channel subset.

    Federated by exact statistics: count, mean and centred scatter per position, combined
    in float64 by the pairwise update, so the server's Gaussian equals the centralized one
    up to rounding (float64 uploads) or to float32's (the default).

    The defaults are the lean statistics chosen on the validation split of MTD
    (benchmarks/results/padim_lean.md, rule fixed before any test number): float32 uploads
    and Gaussians on the stride-8/16 levels (28 x 28 positions at 224 px, the map upsampled),
    an eighth of the published layout's bytes (``strides=[4,8,16]`` with float64: 129 MB
    per site at 224 px against 16 MB).
    """

    strides: list[int] = field(default_factory=lambda: [8, 16])  # backbone levels used
    channels: int = 100  # size of the random channel subset (shared by every client)
    channel_seed: int = 0  # seed of that subset: every client and the server draw the same
    epsilon: float = 0.01  # covariance regularisation: Sigma + epsilon * I (paper)
    # float32: half float64's bytes, the federated covariance then 2.9e-8 off (relative to
    # its largest entry, MTD: benchmarks/results/padim_precision.md); float64: exact up to
    # rounding
    upload_dtype: str = choice("float32", "float64")
    avg_pool: bool = False  # raw layer features, as published (true: 3x3 averaged first)
