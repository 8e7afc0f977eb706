"""Algorithm 1 step 1, the initial normal image ``n0``: the base mask's pixels inpainted.
The paper inpaints with a pretrained MAE, which cannot be had offline; fedad uses
scikit-image's biharmonic inpainting (``f2pad.init=biharmonic``, the default: the masked
pixels continued smoothly from their surroundings) or starts from the input itself
(``f2pad.init=input``, for comparison), or fills them from diffad's anomaly-free
reconstruction of the image (``f2pad.init=diffusion``: seed 003's gradient denoising,
:mod:`fedad.refinements.f2pad.diffusion_init`) or from the site's nearest normal training
image (``f2pad.init=nearest``, :mod:`fedad.refinements.f2pad.nearest_init`). The
"initialisation only" row of the benchmark is this substitute's own mask (the paper
binarises ``||x - n0||`` at 0.2)."""

from __future__ import annotations

import numpy as np
import torch


def inpaint(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` ``(3, H, W)`` with the pixels of ``mask`` ``(H, W)`` (bool) filled by
    biharmonic inpainting (per channel, in ``x``'s units)."""
    from skimage.restoration import inpaint_biharmonic

    if not bool(mask.any()):
        return x.clone()
    img = x.detach().permute(1, 2, 0).double().cpu().numpy()
    out = inpaint_biharmonic(img, mask.cpu().numpy().astype(bool), channel_axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).to(x)


def initial_normal(x: torch.Tensor, mask: torch.Tensor, how: str,
                   reconstruction: torch.Tensor | None = None) -> torch.Tensor:
    """``n0`` by ``how``: ``biharmonic`` (inpaint ``mask``), ``input`` (``x`` itself),
    ``diffusion`` or ``nearest`` (``mask``'s pixels taken from ``reconstruction``: diffad's
    anomaly-free image, or the nearest normal training image; in ``x``'s units)."""
    if how == "biharmonic":
        return inpaint(x, mask)
    if how == "input":
        return x.clone()
    if how in ("diffusion", "nearest"):
        if reconstruction is None:
            raise ValueError(f"f2pad.init={how}: no reconstruction was given")
        return torch.where(mask.bool()[None], reconstruction.to(x), x)
    raise ValueError(f"f2pad.init: unknown initialisation {how!r} "
                     "(biharmonic | input | diffusion)")
