"""Secure aggregation of sums: the fixed-point encoding both ends agree on (no Flower here;
Flower's SecAgg+ masks and sums the encoded terms, :mod:`server.secure`,
:mod:`clients.secure`).

An exchange whose server step is a sum names its sum terms and a public scale for each
(:meth:`~fedad.exchanges.base.Exchange.sum_scales`: from ``secure.max_images``
and ``secure.bound``, never from a site's data). A site divides each term by its scale and
multiplies by SecAgg+'s ``clipping_range`` c, so a term within its bound lies in
``[-c, c]``; SecAgg+ clips to that range, quantises each value stochastically to ``R``
levels (``secure.quantization_bits``), adds the pairwise and private masks modulo 2^32
and the server, after unmasking, gets the sum over the sites that stayed. Decoding
multiplies back by ``scale / c``.

Error: stochastic rounding moves one site's value by less than one level, ``2c / R`` in
scaled units, ``2 * scale / R`` in the term's own; a sum over ``n`` sites is off by less
than ``2 * n * scale / R`` (:func:`error_bound`). Values beyond the bound are clipped: a
site counts them (``note-secure-clipped``) so a bound set too tight shows in the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedad.config.schema import SecureConfig
from fedad.errors import ConfigError

SECURE = "secure"  # the record of a site's encoded sum terms
MODULUS_BITS = 32  # SecAgg+'s masks are drawn modulo 2^32


def quantization_range(cfg: SecureConfig, sites: int) -> int:
    """``R``: the levels of one site's quantised value; their sum over ``sites`` (and
    SecAgg+'s weight factor) must stay below the 2^32 modulus.

    Raises:
        ConfigError: ``secure.quantization_bits`` too large for ``sites``.
    """
    room = MODULUS_BITS - math.ceil(math.log2(sites + 1))
    bits = cfg.quantization_bits or room
    if not 1 <= bits <= room:
        raise ConfigError(f"secure.quantization_bits={cfg.quantization_bits}: with {sites} "
                          f"sites the sum fits 2^{MODULUS_BITS} masks up to {room} bits")
    return 2 ** bits


def encode(terms: Mapping[str, np.ndarray], scales: Mapping[str, float],
           clipping_range: float) -> tuple[dict[str, np.ndarray], int]:
    """The terms scaled into ``[-c, c]`` (float64, in the order of ``scales``) and how many
    values lie beyond and will be clipped.

    Raises:
        ConfigError: a term without a scale, or a scale without a term.
        ValueError: non-finite values (the site then fails the round: a dropout).
    """
    if set(terms) != set(scales):
        raise ConfigError(f"secure sum: terms {sorted(terms)} do not match the scales "
                          f"{sorted(scales)}")
    out = {k: np.asarray(terms[k], dtype=np.float64) * (clipping_range / s)
           for k, s in scales.items()}
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:  # the site drops out rather than spoil everyone's sum
        raise ValueError(f"secure sum: non-finite values in the terms {bad}")
    clipped = int(sum(int((np.abs(v) > clipping_range).sum()) for v in out.values()))
    return out, clipped


def decode(sums: Mapping[str, np.ndarray], scales: Mapping[str, float],
           clipping_range: float) -> dict[str, np.ndarray]:
    """The summed terms in their own units (float64)."""
    return {k: np.asarray(sums[k], dtype=np.float64) * (s / clipping_range)
            for k, s in scales.items()}


def error_bound(scales: Mapping[str, float], sites: int, levels: int) -> dict[str, float]:
    """Per term: the largest error of a decoded sum over ``sites`` from quantisation
    (values within their bounds; see the module docstring)."""
    return {k: 2.0 * sites * s / levels for k, s in scales.items()}


def check(cfg: SecureConfig, sites: int) -> None:
    """``secure.*`` in range for a federation of ``sites``.

    Raises:
        ConfigError: naming the field.
    """
    if sites < 2:
        raise ConfigError(f"secure.enabled: SecAgg+ needs at least 2 sites, got {sites}")
    if cfg.clipping_range <= 0 or cfg.bound <= 0 or cfg.max_images < 1:
        raise ConfigError("secure.clipping_range and secure.bound must be > 0 and "
                          f"secure.max_images >= 1 (got {cfg.clipping_range}, {cfg.bound}, "
                          f"{cfg.max_images})")
    if not (0 < cfg.threshold <= 1 or cfg.threshold >= 2):
        raise ConfigError(f"secure.threshold={cfg.threshold}: a fraction in (0, 1] or a "
                          "count >= 2")
    if not (0 < cfg.num_shares <= 1 or cfg.num_shares >= 3):
        raise ConfigError(f"secure.num_shares={cfg.num_shares}: a fraction in (0, 1] or a "
                          "count >= 3")
    quantization_range(cfg, sites)
