"""FedDyMem's positional memory bank released with differential privacy.

Memory-reduce (paper Eq. 14-15) averages a site's memory maps ``M_i`` ``(H, W, C)`` with
weights ``1 / ||M_i - M^{t-1}||``: a map close to the previous bank can weigh without
bound, so no noise of fixed scale covers one image. **Mechanism**: the weights are uniform
(Eq. 14 at round 0), every map is clipped to Frobenius norm ``C`` and divided by it, and
the site releases ``(n, sum_i M_i)`` with ``N(0, (z sqrt(2))^2)`` noise per entry: one
image moves the pair by at most ``sqrt(2)`` in L2. Post-processing: the mean is the noisy
sum over the noisy count (floored at 1), scaled back by ``C``; Eq. 16's EMA with the bank
the site received is applied after it (the received bank is public to the site). A run of
``R`` uploading rounds is ``R`` Gaussian mechanisms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from fedad.privacy.clipping import clip_rows
from fedad.privacy.noise import gaussian_noise

SENSITIVITY = math.sqrt(2.0)


def private_mean_map(batches: Iterable[torch.Tensor], clip: float, noise_multiplier: float,
                     gen: torch.Generator) -> torch.Tensor:
    """The DP mean ``(H, W, C)`` (float32) of memory maps given as ``(B, H, W, C)``
    batches (see the module docstring)."""
    total, n = None, 0
    for batch in batches:
        flat = batch.detach().to("cpu", torch.float64).flatten(1)
        part = (clip_rows(flat, clip) / clip).sum(dim=0)
        total = part if total is None else total + part
        n += batch.shape[0]
        shape = batch.shape[1:]
    if total is None:
        raise ValueError("private_mean_map: no memory maps")
    std = noise_multiplier * SENSITIVITY
    count = max(n + float(gaussian_noise((), std, gen)), 1.0)
    noisy = total + gaussian_noise(tuple(total.shape), std, gen)
    return (noisy / count * clip).reshape(shape).float()
