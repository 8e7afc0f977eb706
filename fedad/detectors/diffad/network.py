"""The denoiser with a feature head (the authors' ``AnomalyModel``): the DDPM's UNet
predicts the noise of ``x_t``; a head on one of its decoder blocks (``block``: the one at
``diffad.head_stride``) predicts the frozen backbone's features of the clean image.

The head is GroupNorm -> SiLU -> 1x1 convolution, as in the code (there: decoder block 10 of
ADM-256, 512 channels at 64 px of 256, stride 4, to EfficientNet-B4's 272 channels; here:
the decoder block of ``fedad.diffusion.unet``'s UNet at stride ``diffad.head_stride``, 4
by default, to the backbone's ``diffad.strides`` levels).
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureHead(nn.Module):
    """Decoder features ``(B, C_in, h, w)`` -> predicted backbone features ``(B, C, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.silu(self.norm(x)))


class NoiseAndFeatures(nn.Module):
    """``forward(x_t, t)`` -> ``(eps_theta(x_t, t), predicted features)``; the UNet alone
    (``self.unet``) is a plain noise predictor for sampling and denoising."""

    def __init__(self, unet: nn.Module, head: FeatureHead, block: int = 0) -> None:
        super().__init__()
        self.unet, self.head = unet, head
        self._tap: list[torch.Tensor] | None = None  # a list only inside forward
        unet.up_blocks[block].resnets[-1].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if self._tap is not None:  # the UNet called alone keeps nothing
            self._tap.append(output)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._tap = []
        try:
            eps = self.unet(x, t).sample
            (decoded,) = self._tap
        finally:
            self._tap = None
        return eps, self.head(decoded)
