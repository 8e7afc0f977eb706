"""diffad's maps as pure functions on tensors (Lu et al. 2023, Sec. 3.3 and Eq. 11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedad.errors import ConfigError


def level_targets(levels: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """The backbone's levels ``(B, C_l, H_l, W_l)`` on one ``size`` grid, concatenated
    (finer levels area-averaged, coarser ones bilinearly upsampled, as the code resizes
    B4's levels to 64 px)."""
    out = []
    for f in levels:
        if f.shape[-2] >= size[0]:
            out.append(F.adaptive_avg_pool2d(f, size))
        else:
            out.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def zscore(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(N, H, W)`` standardised over its own pixels (the code's KL maps)."""
    flat = maps.flatten(1)
    mean, sd = flat.mean(1).view(-1, 1, 1), flat.std(1).view(-1, 1, 1)
    return (maps - mean) / sd.clamp_min(1e-12)


def feature_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position squared error averaged over channels, ``(N, h, w)``."""
    return (predicted.float() - target.float()).pow(2).mean(1)


def combine(feature: torch.Tensor, kl: torch.Tensor, how: str, alpha: float = 0.5,
            mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """The anomaly map from the feature map and the (z-scored) KL map, both ``(N, H, W)``:
    ``eq11``: ``alpha (feature - mean) / std + (1 - alpha) kl`` (``mean``, ``std``: the
    feature map's over normal images); ``sum``: ``feature + kl`` (the authors' code);
    ``feature`` / ``kl``: one map alone (the ablation rows)."""
    if how == "eq11":
        return alpha * (feature - mean) / max(std, 1e-12) + (1 - alpha) * kl
    if how == "sum":
        return feature + kl
    if how == "feature":
        return feature
    if how == "kl":
        return kl
    raise ConfigError(f"diffad.combine must be eq11, sum, feature or kl, got {how!r}")
