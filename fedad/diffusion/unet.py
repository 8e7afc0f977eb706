"""The DDPM's noise predictor: a ``diffusers`` ``UNet2DModel`` without attention, of the
levels ``ddpm.channels`` (the step budget's: ``budget=cpu`` 16/32/64, 0.64 M parameters,
2.6 MB of float32 weights, what 2 CPU cores train; ``budget=paper`` guided diffusion's
widths). Without attention every layer is a convolution, so a model trained on crops runs
on any image size that is a multiple of its coarsest stride (asymst samples at the crop
size it learnt; diffad trains and scores whole images at ``diffad.size``). Measured on 2
cores at the cpu budget: 0.38 s per training step of 16 crops of 64 px, 0.09 s per 64-px
sample of 10 reverse steps.
"""

from __future__ import annotations

import torch

from fedad.diffusion.config import DDPMConfig


def build_unet(cfg: DDPMConfig, channels: int = 3, seed: int = 0,
               ema: bool = True) -> torch.nn.Module:
    """A fresh noise predictor ``eps_theta(x_t, t)`` drawn with ``seed``, with an EMA
    shadow of its weights when ``ddpm.ema > 0`` and ``ema`` (:mod:`fedad.components.ema`;
    ``ema=False``: a module it is part of keeps the shadow)."""
    from diffusers import UNet2DModel  # imported when a DDPM is built

    from fedad.components.ema import attach

    levels = tuple(int(c) for c in cfg.channels)
    if not levels:
        raise ValueError("ddpm.channels is empty: resolve the config (its budget preset "
                         "fills it) before building a DDPM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return attach(UNet2DModel(
            sample_size=cfg.crop, in_channels=channels, out_channels=channels,
            layers_per_block=cfg.layers_per_block, block_out_channels=levels,
            down_block_types=("DownBlock2D",) * len(levels),
            up_block_types=("UpBlock2D",) * len(levels),
            norm_num_groups=cfg.groups), max(float(cfg.ema), 0.0) if ema else 0.0)


def predict_noise(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``eps_theta(x_t, t)`` for a batch (``t``: ``(B,)`` integer steps)."""
    return unet(x, t).sample
