"""A private memory bank: K-means centres of a site's patch features by DP-Lloyd (Blum et
al. 2005, "Practical privacy: the SuLQ framework"; Su et al. 2016), uploaded in place of
PatchCore's coreset.

A coreset is a set of *real* patch features chosen by the data, so no noise added to it
makes it differentially private: the choice itself reveals which patches exist. Centres
computed from noisy sums do not have that problem. **Mechanism**: every patch feature is
clipped to L2 norm ``C`` and divided by it; every image weighs 1 in total (each of its
``P`` patches ``1/P``), so adding or removing one image changes

* release 0, ``(n, sum_i mean_p x, sum_i mean_p x^2)`` (images, patch mean, per-channel
  mean square), by at most ``sqrt(3)`` in L2;
* each Lloyd release, ``(counts_k, sums_k)`` over the ``K`` centres, by at most ``sqrt(2)``
  (its patches' weights and weighted features, at most 1 each in L1 and L2).

Each release gets ``N(0, (z sqrt(3))^2)`` noise per entry: ``iterations + 1`` Gaussian
mechanisms of noise multiplier ``z`` (:func:`releases`). Everything else is
post-processing:

* the centres start as ``K`` spread-out points (greedy farthest-point selection,
  :func:`spread_start`) among the central half of ``16 K`` draws from the Gaussian of
  release 0's noisy mean and variance;
* a Lloyd step moves a centre to its noisy mean only where its noisy weight exceeds twice
  the noise's standard deviation; every other centre (one no patch chose, or one drowned in
  noise) moves next to one of the heaviest centres, so that the next step splits that
  cluster (:func:`reseed`: in many dimensions most starting draws lie far from every
  patch);
* centres are kept inside the unit ball (where every clipped feature is), and those below
  that weight at the last step are dropped.
"""

from __future__ import annotations

import math

import torch

from fedad.privacy.clipping import clip_rows
from fedad.privacy.noise import gaussian_noise

SENSITIVITY = math.sqrt(3.0)  # the largest of the releases' L2 sensitivities
_CHUNK = 65_536  # patches assigned at once


def releases(iterations: int) -> int:
    """Gaussian mechanisms in one private bank: the moments, then every Lloyd step."""
    return iterations + 1


def spread_start(mean: torch.Tensor, var: torch.Tensor, k: int,
                 gen: torch.Generator) -> torch.Tensor:
    """``k`` of the ``8 k`` draws nearest the mean among ``16 k`` draws from
    ``N(mean, diag(var))``, chosen greedily each farthest from those before (the first:
    the draw nearest the mean): centres that cover the distribution's bulk, neither crowding
    its middle nor sitting in its tails."""
    draws = mean + var.sqrt() * torch.randn(16 * k, mean.numel(), generator=gen,
                                            dtype=torch.float64)
    radius = torch.linalg.vector_norm((draws - mean) / var.sqrt(), dim=1)
    draws = draws[radius.argsort()[:8 * k]]
    pick = [0]
    gap = torch.linalg.vector_norm(draws - draws[0], dim=1)
    for _ in range(k - 1):
        pick.append(int(gap.argmax()))
        gap = torch.minimum(gap, torch.linalg.vector_norm(draws - draws[pick[-1]], dim=1))
    return draws[pick].clone()


def reseed(centres: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor,
           scale: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``centres`` with every one not in ``keep`` moved to one of the kept centres of
    largest ``counts`` (the heaviest first, cycling) plus ``N(0, diag(scale^2))``."""
    lost = (~keep).nonzero().flatten()
    if not len(lost) or not keep.any():
        return centres
    heavy = keep.nonzero().flatten()[counts[keep].argsort(descending=True)]
    donors = heavy[torch.arange(len(lost)) % len(heavy)]
    out = centres.clone()
    out[lost] = centres[donors] + scale * torch.randn(len(lost), centres.shape[1],
                                                      generator=gen, dtype=centres.dtype)
    return out


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.cdist(x[a:a + _CHUNK], centres).argmin(dim=1)
                      for a in range(0, x.shape[0], _CHUNK)])


def private_centres(rows: torch.Tensor, k: int, clip: float, iterations: int,
                    noise_multiplier: float, gen: torch.Generator
                    ) -> tuple[torch.Tensor, float]:
    """``(centres (k' <= k, C) float32 in the features' scale, noisy image count)`` of the
    patch features ``rows`` ``(N, P, C)`` (see the module docstring)."""
    n, p, c = rows.shape
    x = (clip_rows(rows.double(), clip) / clip).reshape(n * p, c)
    weight = 1.0 / p
    std = noise_multiplier * SENSITIVITY
    count = n + float(gaussian_noise((), std, gen))
    first = x.sum(dim=0) * weight + gaussian_noise((c,), std, gen)
    square = (x * x).sum(dim=0) * weight + gaussian_noise((c,), std, gen)
    images = max(count, 1.0)
    mean = first / images
    var = (square / images - mean**2).clamp_min(1e-6)
    centres = spread_start(mean, var, k, gen)
    keep = torch.ones(k, dtype=torch.bool)
    counts = torch.zeros(k, dtype=torch.float64)
    for step in range(iterations):
        if step:
            centres = reseed(centres, keep, counts, 0.1 * var.sqrt(), gen)
        near = _nearest(x, centres)
        counts = torch.bincount(near, minlength=k).double() * weight
        sums = torch.zeros(k, c, dtype=torch.float64).index_add_(0, near, x) * weight
        counts = counts + gaussian_noise((k,), std, gen)
        sums = sums + gaussian_noise((k, c), std, gen)
        keep = counts > max(2.0 * std, 1e-12)
        centres[keep] = sums[keep] / counts[keep, None]
        norms = torch.linalg.vector_norm(centres, dim=1, keepdim=True)
        centres = centres / norms.clamp_min(1.0)
    if iterations and not keep.any():  # everything drowned: keep the largest-weight one
        keep[int(counts.argmax())] = True
    return (centres[keep] * clip).float(), count
