"""Memory generator G (paper Sec. IV-B, Alg. 1, Eq. 10-11).

CoordConv over ``[P, X, Y]`` gives ``P_hat``; a mapping ``phi`` (two 1x1 convolutions, tanh)
turns ``P_hat`` into sampling coordinates in ``[-1, 1]``; a trainable ``Hg x Wg x C`` grid is
sampled bilinearly there (Eq. 10-11 are exactly ``grid_sample`` with ``align_corners=True``:
``p~ = (p + 1) / 2 * (W_G - 1)``); ``[O, P_hat]`` goes through a 1x1 convolution
``2C -> C`` to give the memory feature ``M``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_channels(batch: int, height: int, width: int, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """``(B, 2, H, W)`` Cartesian coordinates X (along width) and Y, each in ``[-1, 1]``."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).expand(batch, 2, height, width)


class CoordConv(nn.Module):
    """1x1 convolution over the input concatenated with its X/Y coordinate channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.conv(torch.cat([x, coordinate_channels(b, h, w, x.device, x.dtype)], 1))


def sample_grid(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling ``s(G, p)`` of Eq. 10-11.

    Args:
        grid: ``(C, Hg, Wg)`` trainable feature grid.
        coords: ``(B, H, W, 2)`` coordinates ``(p_x, p_y)`` in ``[-1, 1]``.

    Returns:
        ``(B, C, H, W)`` sampled features ``O``.
    """
    b = coords.shape[0]
    return F.grid_sample(grid.expand(b, *grid.shape), coords, mode="bilinear",
                         padding_mode="border", align_corners=True)


class MemoryGenerator(nn.Module):
    """``M = conv1x1([s(G, phi(P_hat)), P_hat])`` with ``P_hat = CoordConv(P)``."""

    def __init__(self, channels: int, grid_size: int = 8, phi_hidden: int = 64) -> None:
        super().__init__()
        self.coordconv = CoordConv(channels, channels)
        self.phi = nn.Sequential(
            nn.Conv2d(channels, phi_hidden, kernel_size=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(phi_hidden, 2, kernel_size=1),
            nn.Tanh(),
        )
        self.grid = nn.Parameter(torch.empty(channels, grid_size, grid_size))
        # Xavier-normal over the grid seen as (Hg*Wg) x C (Alg. 4 line 3).
        nn.init.xavier_normal_(self.grid.view(channels, -1))
        self.out = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        p_hat = self.coordconv(projected)
        coords = self.phi(p_hat).permute(0, 2, 3, 1)  # (B, H, W, 2) as (x, y)
        sampled = sample_grid(self.grid, coords)
        return self.out(torch.cat([sampled, p_hat], dim=1))

    def paths(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output's two terms without the bias, ``(W_O O, W_P P_hat)``, each
        ``(B, C, H, W)``: what the sampled grid and what ``P_hat`` contribute to ``M``
        (their sum plus the bias is :meth:`forward`); the grid path's share is a collapse
        measure (benchmarks/feddymem_head.py)."""
        c = self.grid.shape[0]
        p_hat = self.coordconv(projected)
        sampled = sample_grid(self.grid, self.phi(p_hat).permute(0, 2, 3, 1))
        w = self.out.weight
        return (F.conv2d(sampled, w[:, :c]), F.conv2d(p_hat, w[:, c:]))

    @torch.no_grad()
    def identity_(self) -> MemoryGenerator:
        """Start as ``M = P``: CoordConv passes ``P`` through (coordinate weights 0) and the
        output convolution reads only ``P_hat`` (weights on the sampled grid 0); ``phi`` and
        the grid keep their random draw and receive gradients from the first step."""
        c = self.grid.shape[0]
        eye = torch.eye(c)[:, :, None, None]
        self.coordconv.conv.weight.zero_()
        self.coordconv.conv.weight[:, :c].copy_(eye)
        self.coordconv.conv.bias.zero_()
        self.out.weight.zero_()
        self.out.weight[:, c:].copy_(eye)
        self.out.bias.zero_()
        return self

