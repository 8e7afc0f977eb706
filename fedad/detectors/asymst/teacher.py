"""The teacher: the frozen backbone's levels at ``asymst.strides`` (4/8/16 for Lite0: 24,
40 and 112 channels), each map as it is (no pooling, no fusion: the losses and the head
compare level by level, as DeSTSeg does)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import timm
import torch
from torch import nn

from fedad.config.schema import RunConfig
from fedad.features.extractor import build_feature_extractor, layers_for_strides


def teacher_backbone(cfg: RunConfig):
    """The backbone config of the teacher (its levels, raw maps, features not pixels)."""
    layers = layers_for_strides(cfg.backbone.name, [int(s) for s in cfg.asymst.strides])
    return replace(cfg.backbone, layers=layers, avg_pool=False, pixels=False)


@lru_cache(maxsize=8)
def _channels(name: str, layers: tuple[int, ...]) -> tuple[int, ...]:
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    return tuple(int(c) for c in model.feature_info.channels())


def teacher_channels(cfg: RunConfig) -> tuple[int, ...]:
    """Channels of each teacher level, without loading weights."""
    bb = teacher_backbone(cfg)
    return _channels(bb.name, tuple(int(i) for i in bb.layers))


class Teacher(nn.Module):
    """Frozen: ``forward(images)`` is the list of level maps, finest first."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        extractor, info = build_feature_extractor(teacher_backbone(cfg))
        # the normalisation the site's pixels arrive in (the backbone's)
        self.register_buffer("mean", torch.tensor(info["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info["std"]).view(1, -1, 1, 1))
        self.backbone = extractor.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Teacher:  # stays frozen, BatchNorm stats fixed
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images))

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> ``[-1, 1]`` (what the DDPM and the synthesis work in)."""
        return ((images * self.std + self.mean) * 2 - 1).clamp(-1, 1)

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> normalised pixels."""
        return ((images + 1) / 2 - self.mean) / self.std
