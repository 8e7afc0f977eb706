"""The Gaussian noise of a release, from a seeded generator or fresh OS entropy."""

from __future__ import annotations

import secrets

import numpy as np
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


def site_seed(seed: int, site: int, release: int = 0) -> int:
    """The noise seed of one site's ``release`` (e.g. its round): ``-1`` (fresh entropy)
    stays ``-1``; otherwise distinct per site and release (NumPy's ``SeedSequence`` of the
    three), so no two releases of a repeatable run share noise."""
    if seed < 0:
        return -1
    state = np.random.SeedSequence([seed, site, release]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
