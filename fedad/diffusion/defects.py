"""Labelled defects from a DDPM of normal images (seed 000, first abstract), read a priori
through RealNet's SDAS and DRAEM's masks (``docs``: seed-methods.md section 2):

* the source: perturbed samples (:func:`~fedad.diffusion.sample.perturbed_sample`,
  ``s ~ U[inflation]``) at the DDPM's training crop size, from pure noise (``start=noise``,
  RealNet's reading: a generated image whose variance inflation makes it anomalous) or
  from a crop of a normal image noised to ``t_start`` (``start=image``, SDEdit's
  reading); a site draws a pool of them once (:func:`draw_pool`);
* the mask: DRAEM's Perlin mask, noise at ``2^U{0..5}`` lattice cells per axis, rotated by
  ``U(-90, 90)`` degrees, thresholded at 0.5 (redrawn until it covers ``min_area``);
  on a grey image (every channel equal, as MTD's) the sample is made grey too (its channel
  mean): a coloured defect on a grey tile would be found by its colour alone;
* the defect: a pool sample blended into the normal image at a random window of its
  size, inside a Perlin mask drawn in the window, at an opacity ``beta ~ U[opacity]``
  (:func:`paste`; DRAEM's ``1 - beta`` with ``beta ~ U[0, 0.8)``); the label is the
  mask's pixels that changed by at least one grey level, every other pixel is the
  input's, so the mask covers exactly the changed pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from fedad.data.textures import perlin_noise
from fedad.diffusion.sample import perturbed_sample
from fedad.progress import progress

GREY = 2.0 / 255.0  # one grey level in [-1, 1]


def perlin_mask(size: int, rng: np.random.Generator, min_area: float = 0.005,
                tries: int = 50) -> np.ndarray:
    """DRAEM's Perlin mask ``(size, size)`` bool (module docstring)."""
    noise = np.zeros((size, size))
    for _ in range(tries):
        res = (2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)))
        # DRAEM's noise is sqrt(2) times the classic lattice interpolation (about [-1, 1]);
        # fedad's perlin_noise is the classic one, so 0.5 is DRAEM's threshold only so
        noise = np.sqrt(2.0) * perlin_noise((size, size), res, rng)
        noise = ndimage.rotate(noise, rng.uniform(-90.0, 90.0), reshape=False, order=1,
                               mode="reflect")
        mask = noise > 0.5
        if mask.mean() >= min_area:
            return mask
    # a lattice too coarse to cross 0.5 in every draw: the top min_area of the last noise
    return noise >= np.quantile(noise, 1.0 - min_area)


def exact(image: torch.Tensor, out: torch.Tensor,
          region: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` with every pixel outside ``region`` or changed by less than one grey level
    reset to ``image``'s, and the ``(H, W)`` bool mask of the pixels left changed."""
    mask = (out - image).abs().amax(dim=0) >= GREY
    if region is not None:
        mask &= region
    return torch.where(mask[None], out, image), mask


def paste(image: torch.Tensor, drawn: torch.Tensor, rng: np.random.Generator,
          opacity: Sequence[float] = (0.2, 1.0), min_area: float = 0.005
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` ``(C, H, W)`` in ``[-1, 1]`` with ``drawn`` ``(C, S, S)``, ``S <= H, W``
    (flipped and rotated by a multiple of 90 degrees at random) blended in at a random
    ``S`` x ``S`` window inside a Perlin mask drawn in that window, at an opacity ``beta ~
    U[opacity]`` (the drawn sample's weight; DRAEM's ``1 - beta``); returns the defective
    image and its exact mask ``(H, W)`` bool."""
    h, w = image.shape[-2:]
    size = drawn.shape[-1]
    if size > min(h, w):
        raise ValueError(f"a {size}-px defect sample does not fit a {h} x {w} image")
    if len(image) > 1 and torch.allclose(image, image[:1].expand_as(image), atol=1e-3):
        drawn = drawn.mean(0, keepdim=True).expand_as(drawn)  # a grey image: a grey defect
    drawn = torch.rot90(drawn, int(rng.integers(4)), dims=(1, 2))
    if rng.random() < 0.5:
        drawn = drawn.flip(2)
    y, x = (0, 0) if size == h == w else (int(rng.integers(0, h - size + 1)),
                                          int(rng.integers(0, w - size + 1)))
    region = torch.zeros(h, w, dtype=torch.bool)
    region[y:y + size, x:x + size] = torch.from_numpy(perlin_mask(size, rng, min_area))
    placed = image.clone()
    placed[:, y:y + size, x:x + size] = drawn
    beta = float(rng.uniform(*opacity))
    m = region.to(image.dtype)[None] * beta
    return exact(image, (1 - m) * image + m * placed, region)


def draw_pool(unet: torch.nn.Module, abar: torch.Tensor, images: torch.Tensor, count: int,
              start: str, t_start: float, steps: int, inflation: Sequence[float],
              generator: torch.Generator, batch: int = 4, desc: str = "DDPM defects",
              size: int = 0) -> torch.Tensor:
    """``count`` perturbed samples ``(count, C, S, S)`` in ``[-1, 1]``: from noise, or
    (``start=image``) from random ``size``-px crops (0: whole) of ``images`` (``(N, C, H,
    W)`` in ``[-1, 1]``) noised to ``t_start`` of ``T``."""
    from fedad.diffusion.train import random_crops

    T = len(abar)
    t0 = T - 1 if start == "noise" else int(round(t_start * (T - 1)))
    device = next(unet.parameters()).device
    lo, hi = float(inflation[0]), float(inflation[1])
    out = []
    chunks = range(0, count, batch)
    for i in progress(chunks, len(chunks), desc, every=30.0):
        n = min(batch, count - i)
        if size:
            x0 = random_crops(images, size, n, generator)
        else:
            x0 = images[torch.randint(0, len(images), (n,), generator=generator)]
        s = lo + (hi - lo) * torch.rand(n, generator=generator)
        x = perturbed_sample(unet, x0.to(device), abar, t0, steps, s, generator)
        out.append(x.cpu())
    return torch.cat(out) if out else images[:0].clone()
