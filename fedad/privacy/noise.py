"""The Gaussian noise of a release, from a seeded generator or fresh OS entropy."""

from __future__ import annotations

import secrets

import torch


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (``>= 0``: reproducible runs and tests), or with
    63 fresh bits of OS entropy (``seed < 0``: what a deployment should use, since a
    known seed lets anyone subtract the noise). Like Opacus without ``secure_mode``, the
    generator itself is PyTorch's, not a cryptographic one."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed if seed >= 0 else secrets.randbits(63))
    return g


def gaussian_noise(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    """float64 ``N(0, std^2)`` noise of ``shape`` (CPU)."""
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


def site_seed(seed: int, site: int) -> int:
    """The noise seed of one site: ``-1`` (fresh entropy) stays ``-1``; otherwise distinct
    per site, so sites of a repeatable run never share noise."""
    return -1 if seed < 0 else seed * 1_000_003 + site
