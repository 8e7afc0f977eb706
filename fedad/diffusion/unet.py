"""The DDPM's noise predictor: a small ``diffusers`` ``UNet2DModel`` without attention.

Sized for 2 CPU cores (the choice, a priori): it learns from random ``ddpm.crop`` x
``ddpm.crop`` crops (64 px) of the normal training images at the detector's input size,
with three levels of 16/32/64 channels (0.64 M parameters, 2.6 MB of float32 weights per
round). Without attention every layer is a convolution, so the model trained on crops runs
on the whole 224-px image at synthesis: a defect is generated at the resolution the
detector sees, with the texture's own grain, instead of a 64-px image blown up. Measured on
2 cores: 0.38 s per training step of 16 crops, 2.2 s per 224-px sample of 10 reverse
steps (one core, the other busy: 0.9 s and 0.46 s per forward pass). On a GPU the
same config trains on larger crops (``ddpm.crop``) and wider levels (``ddpm.channels``).
"""

from __future__ import annotations

import torch

from fedad.config.schema import DDPMConfig


def build_unet(cfg: DDPMConfig, channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A fresh noise predictor ``eps_theta(x_t, t)`` drawn with ``seed``, with an EMA
    shadow of its weights when ``ddpm.ema > 0`` (:mod:`fedad.components.ema`)."""
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
            norm_num_groups=cfg.groups), max(float(cfg.ema), 0.0))


def predict_noise(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``eps_theta(x_t, t)`` for a batch (``t``: ``(B,)`` integer steps)."""
    return unet(x, t).sample
