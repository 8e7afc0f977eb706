"""Anomaly maps and image scores, following PatchCore and CFA (the paper's [51], [58]).

Per patch feature: distances to its ``k`` nearest bank features; the patch score is the
CFA softmin-weighted nearest distance (default) or the plain nearest distance. The patch
map is bilinearly upsampled to the image size and smoothed by a Gaussian of sigma 4; the
image score is the map's maximum. No normalisation: metrics use raw scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedad.errors import ConfigError


def patch_scores(distances: torch.Tensor, mode: str = "softmin") -> torch.Tensor:
    """Score per patch from its sorted k-NN distances ``(..., k)``.

    ``softmin``: CFA's ``softmin(d)[0] * d[0]``: the nearest distance, down-weighted when
    the other neighbours are about as close (a dense normal region) and kept when the
    nearest stands alone. ``nearest``: ``d[0]`` (PatchCore without reweighting).
    """
    if mode == "nearest":
        return distances[..., 0]
    if mode == "softmin":
        return torch.softmax(-distances, dim=-1)[..., 0] * distances[..., 0]
    raise ConfigError(f"score.mode must be softmin or nearest, got {mode!r}")


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius ``int(truncate * sigma + 0.5)`` (as scipy)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(N, H, W)`` maps, reflecting at the borders
    (replicating when the map is smaller than the kernel radius)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps[:, None]
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x[:, 0]


def anomaly_maps(
    scores: torch.Tensor, image_size: int | tuple[int, int], sigma: float = 4.0
) -> torch.Tensor:
    """Upsample ``(N, h, w)`` patch scores bilinearly to ``image_size`` and smooth them."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    up = F.interpolate(scores[:, None].float(), size=size, mode="bilinear",
                       align_corners=False)[:, 0]
    return gaussian_blur(up, sigma)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image score = maximum of its anomaly map."""
    return maps.flatten(1).amax(dim=1)

