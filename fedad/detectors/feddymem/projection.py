"""Projection layer P (paper Eq. 9): ``P = sigma(conv1x1(F))``."""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """1x1 convolution ``C_in -> C_out`` then an activation (Eq. 9).

    The paper leaves the activation unnamed; we use LeakyReLU(0.2) so no channel can die.
    ``batch_norm`` inserts a BatchNorm between the two, so weight-exchanging baselines such
    as FedBN have normalisation state to keep local (off for the paper's FedDyMem).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None,
                 batch_norm: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(features)))

    @torch.no_grad()
    def identity_(self) -> Projection:
        """Start as ``sigma(F)``: identity weights, zero bias (``head.init=identity``)."""
        out_c, in_c = self.conv.weight.shape[:2]
        if out_c != in_c:
            raise ValueError(f"identity init needs C_out = C_in, got {out_c} != {in_c}")
        self.conv.weight.copy_(torch.eye(in_c)[:, :, None, None])
        self.conv.bias.zero_()
        return self

