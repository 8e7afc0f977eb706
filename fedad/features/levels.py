"""The frozen backbone's levels at chosen strides, each map as it is (no pooling, no
fusion), for detectors that run the backbone on pixels themselves: asymst's teacher
(4/8/16 for Lite0: 24, 40 and 112 channels) and diffad's feature targets (2/4/8/16)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

import timm
import torch
from torch import nn

from fedad.config.schema import BackboneConfig
from fedad.features.extractor import build_feature_extractor, layers_for_strides


def level_backbone(backbone: BackboneConfig, strides: Sequence[int]) -> BackboneConfig:
    """The backbone config of the levels at ``strides`` (raw maps, features not pixels)."""
    layers = layers_for_strides(backbone.name, [int(s) for s in strides])
    return replace(backbone, layers=layers, avg_pool=False, pixels=False)


@lru_cache(maxsize=8)
def _channels(name: str, layers: tuple[int, ...]) -> tuple[int, ...]:
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    return tuple(int(c) for c in model.feature_info.channels())


def level_channels(backbone: BackboneConfig, strides: Sequence[int]) -> tuple[int, ...]:
    """Channels of each level, without loading weights."""
    bb = level_backbone(backbone, strides)
    return _channels(bb.name, tuple(int(i) for i in bb.layers))


class Levels(nn.Module):
    """Frozen: ``forward(images)`` is the list of level maps, finest first (no gradient;
    :meth:`with_grad` keeps one for the input)."""

    def __init__(self, backbone: BackboneConfig, strides: Sequence[int]) -> None:
        super().__init__()
        extractor, info = build_feature_extractor(level_backbone(backbone, strides))
        # the normalisation the site's pixels arrive in (the backbone's)
        self.register_buffer("mean", torch.tensor(info["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info["std"]).view(1, -1, 1, 1))
        self.backbone = extractor.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Levels:  # stays frozen, BatchNorm stats fixed
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images))

    def with_grad(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The levels with the graph to ``images`` kept (the weights stay frozen)."""
        return list(self.backbone(images))

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> ``[-1, 1]`` (what a DDPM works in)."""
        return ((images * self.std + self.mean) * 2 - 1).clamp(-1, 1)

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> normalised pixels."""
        return ((images + 1) / 2 - self.mean) / self.std
