"""PaDiM's Gaussian statistics (Eq. 1's count, mean and scatter per position) released
with Gaussian noise: differential privacy for one site's upload.

**Mechanism.** Every feature row ``x_p`` (one image at one position) is clipped to L2 norm
``C`` and divided by ``C`` (:func:`~fedad.privacy.clipping.clip_rows`), so ``||x_p|| <= 1``.
The site's release is the triple of sums

    n,  S1_p = sum_images x_p  (P x d),  S2_p = sum_images x_p x_p^T  (upper triangle),

with i.i.d. ``N(0, (z Delta)^2)`` noise on every entry. Adding or removing one image (the
neighbouring relation) changes ``n`` by 1, ``S1`` by at most ``sqrt(P)`` in L2 (``P``
positions, each ``<= 1``) and the upper triangles of ``S2`` by at most ``sqrt(P)``
(``||x x^T||_F = ||x||^2 <= 1`` per position), so the L2 sensitivity of the whole release
is ``Delta = sqrt(1 + 2P)`` (:func:`sensitivity`): one Gaussian mechanism of noise
multiplier ``z`` (:mod:`~fedad.privacy.accountant` turns ``z`` into epsilon).

**Post-processing** (free under DP): the noisy count is floored at 2, the mean is
``S1 / n``, the scatter ``S2 - n mu mu^T`` is projected onto the positive semi-definite
cone (eigenvalues clipped at 0, so the upload passes PaDiM's ``validate``), and both are
scaled back by ``C`` and ``C^2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedad.components.gaussian import position_statistics
from fedad.privacy.clipping import clip_rows
from fedad.privacy.noise import gaussian_noise

MIN_COUNT = 2  # the noisy count's floor: Eq. 1's covariance divides by n - 1


def sensitivity(positions: int) -> float:
    """L2 sensitivity of the sums of one image's ``positions`` unit-norm rows."""
    return math.sqrt(1 + 2 * positions)


def clipped_sums(rows: torch.Tensor, clip: float) -> dict[str, torch.Tensor]:
    """``n``, ``S1`` ``(P, d)`` and ``S2`` ``(P, d, d)`` (float64) of ``rows`` ``(N, P, d)``
    clipped to ``clip`` and divided by it."""
    unit = clip_rows(rows.double(), clip) / clip
    stats = position_statistics(unit)
    n = float(stats["count"][0])
    mean = torch.from_numpy(stats["mean"])
    second = torch.from_numpy(stats["scatter"]) + n * mean[:, :, None] * mean[:, None, :]
    return {"count": torch.tensor(n, dtype=torch.float64), "first": n * mean,
            "second": second}


def add_noise(sums: dict[str, torch.Tensor], std: float,
              gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``sums`` with ``N(0, std^2)`` on the count, every entry of ``S1`` and every upper
    entry of ``S2`` (mirrored below the diagonal, so ``S2`` stays symmetric)."""
    second = sums["second"]
    d = second.shape[-1]
    rows, cols = torch.triu_indices(d, d)
    upper = gaussian_noise((second.shape[0], rows.numel()), std, gen)
    noise = torch.zeros_like(second)
    noise[:, rows, cols] = upper
    noise[:, cols, rows] = upper
    return {"count": sums["count"] + gaussian_noise((), std, gen),
            "first": sums["first"] + gaussian_noise(tuple(sums["first"].shape), std, gen),
            "second": second + noise}


def statistics_from_sums(sums: dict[str, torch.Tensor], clip: float
                         ) -> dict[str, np.ndarray]:
    """Post-processing: PaDiM's ``count`` (int64), ``mean`` ``(P, d)`` and full centred
    ``scatter`` ``(P, d, d)`` (positive semi-definite), in the features' own scale."""
    n = max(float(sums["count"]), float(MIN_COUNT))
    mean = sums["first"] / n
    scatter = sums["second"] - n * mean[:, :, None] * mean[:, None, :]
    vals, vecs = torch.linalg.eigh(0.5 * (scatter + scatter.transpose(1, 2)))
    scatter = (vecs * vals.clamp_min(0)[:, None, :]) @ vecs.transpose(1, 2)
    scatter = 0.5 * (scatter + scatter.transpose(1, 2))
    return {"count": np.array([int(round(n))], dtype=np.int64),
            "mean": (mean * clip).numpy(), "scatter": (scatter * clip**2).numpy()}


def private_statistics(rows: torch.Tensor, clip: float, noise_multiplier: float,
                       gen: torch.Generator) -> dict[str, np.ndarray]:
    """The DP release of ``rows`` ``(N, P, d)``'s statistics (see the module docstring)."""
    sums = clipped_sums(rows, clip)
    std = noise_multiplier * sensitivity(rows.shape[1])
    return statistics_from_sums(add_noise(sums, std, gen), clip)
