"""A site's labelled training defects, made on the fly from its normal images (they never
leave the site): ``synthesis=ddpm`` pastes a sample of the site's pool of perturbed DDPM
samples into a Perlin mask (:func:`fedad.diffusion.defects.paste`); ``synthesis=cutpaste``
(the alternative, and what a site that cannot train the DDPM uses) draws fedad's classical
cut-paste / Perlin blob / scratch (:func:`fedad.data.textures.apply_defect`)."""

from __future__ import annotations

import numpy as np
import torch

from fedad.data.textures import DEFECT_TYPES, apply_defect
from fedad.diffusion.defects import exact, paste


def classical_defect(image: torch.Tensor, rng: np.random.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` ``(C, S, S)`` in ``[-1, 1]`` with one cut-paste, Perlin-blob or scratch
    defect (grey, on every channel), and its exact mask."""
    grey = np.rint(((image.mean(0) + 1) * 127.5).clamp(0, 255).numpy()).astype(np.uint8)
    kind = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))]
    drawn, region = apply_defect(grey, kind, rng, "")
    delta = (torch.from_numpy(drawn.astype(np.float32)) - torch.from_numpy(
        grey.astype(np.float32))) / 127.5
    return exact(image, (image + delta[None]).clamp(-1, 1), torch.from_numpy(region))


def defect_batch(images: torch.Tensor, pool: torch.Tensor | None, rng: np.random.Generator,
                 clean_fraction: float, opacity=(0.5, 1.0)
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` ``(B, C, S, S)`` in ``[-1, 1]``, each kept clean with probability
    ``clean_fraction`` or given one defect (from ``pool`` when given, else classical), and
    the masks ``(B, S, S)`` float (0 for clean images)."""
    out = images.clone()
    masks = torch.zeros(images.shape[0], *images.shape[-2:])
    for i in range(len(images)):
        if rng.random() < clean_fraction:
            continue
        if pool is not None and len(pool):
            drawn = pool[int(rng.integers(len(pool)))]
            out[i], m = paste(images[i], drawn, rng, opacity)
        else:
            out[i], m = classical_defect(images[i], rng)
        masks[i] = m.float()
    return out, masks
