"""Frozen multi-level features (paper Eq. 8): timm ``features_only`` backbone, optional 3x3
neighbourhood average, bilinear upsampling to the largest map and channel concatenation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from fedad.config.schema import BackboneConfig
from fedad.errors import ConfigError
from fedad.features.backbones import create_backbone, normalisation


class FeatureExtractor(nn.Module):
    """Frozen backbone returning fused patch features ``(B, C, H, W)`` (Eq. 8).

    ``H, W`` are the size of the first (largest) selected layer, ``C`` the sum of the
    selected layers' channels. With ``avg_pool`` each layer is first averaged over a 3x3
    neighbourhood (stride 1), as PatchCore does, so a patch sees its neighbours.
    """

    def __init__(self, backbone: nn.Module, avg_pool: bool = True) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.avg_pool = avg_pool
        self.channels = int(sum(backbone.feature_info.channels()))
        self.reduction = int(backbone.feature_info.reduction()[0])

    def train(self, mode: bool = True) -> FeatureExtractor:  # stays frozen, BN stats fixed
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fuse(images)

    def fuse(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. 8's fused features with autograd on: gradients flow to ``images`` (the
        weights stay frozen), what a refinement that optimises the image needs."""
        maps = self.backbone(images)
        if self.avg_pool:
            maps = [F.avg_pool2d(m, kernel_size=3, stride=1, padding=1) for m in maps]
        size = maps[0].shape[-2:]
        up = [m if m.shape[-2:] == size else
              F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        return torch.cat(up, dim=1)

    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of the features for a square input of ``image_size``."""
        side = -(-image_size // self.reduction)
        return self.channels, side, side


class PixelExtractor(nn.Module):
    """The identity on normalised images: what a detector that reads pixels
    (``backbone.pixels``) is handed in place of features, through the same cache."""

    channels = 3
    reduction = 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def output_shape(self, image_size: int) -> tuple[int, int, int]:
        return 3, int(image_size), int(image_size)


def build_feature_extractor(cfg: BackboneConfig) -> tuple[FeatureExtractor | PixelExtractor, dict]:
    """The frozen extractor and its description (name, weights, layers, mean, std)."""
    layers = tuple(int(i) for i in cfg.layers)
    if not layers or sorted(layers) != list(layers):
        raise ConfigError(f"backbone.layers must be increasing indices, got {list(cfg.layers)}")
    full = create_backbone(cfg.name, cfg.weights)
    mean, std = normalisation(full)
    if cfg.pixels:  # the detector runs the backbone itself: pixels, normalised for it
        return PixelExtractor(), {"name": "pixels", "backbone": cfg.name, "mean": list(mean),
                                  "std": list(std), "channels": 3, "reduction": 1}
    feats = timm.create_model(cfg.name, pretrained=False, features_only=True, out_indices=layers)
    full_state = full.state_dict()
    missing = [k for k in feats.state_dict() if k not in full_state]
    if missing:
        raise ConfigError(f"backbone {cfg.name}: feature model keys not in weights: {missing[:3]}")
    feats.load_state_dict({k: full_state[k] for k in feats.state_dict()})
    extractor = FeatureExtractor(feats, avg_pool=cfg.avg_pool)
    info = {"name": cfg.name, "weights": cfg.weights, "layers": list(layers),
            "avg_pool": cfg.avg_pool, "mean": list(mean), "std": list(std),
            "channels": extractor.channels, "reduction": extractor.reduction}
    return extractor, info


def extractor_signature(info: dict, state: dict[str, torch.Tensor] | None = None,
                        extra: Sequence[object] = ()) -> str:
    """A short hash identifying an extractor's outputs (for the disk cache key)."""
    h = hashlib.sha256(repr(sorted(info.items())).encode())
    if state is not None:  # weights matter: hash a few tensors' bytes
        for key in list(state)[:: max(1, len(state) // 8)]:
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes()[:4096])
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:16]


def layer_strides(name: str) -> list[int]:
    """Stride of each ``features_only`` level of a timm backbone (no weights loaded)."""
    model = timm.create_model(name, pretrained=False, features_only=True)
    return [int(r) for r in model.feature_info.reduction()]


def layers_for_strides(name: str, strides: Sequence[int]) -> list[int]:
    """The ``features_only`` level indices of backbone ``name`` whose strides are ``strides``
    (e.g. 8 and 16 -> levels 2 and 3 for EfficientNet and ResNet alike).

    Raises:
        ConfigError: a stride the backbone does not have, naming the ones it has.
    """
    have = layer_strides(name)
    out = []
    for s in strides:
        if int(s) not in have:
            raise ConfigError(f"backbone {name} has no level of stride {s} (strides: {have})")
        out.append(have.index(int(s)))
    return sorted(out)


def feature_geometry(cfg: BackboneConfig, image_size: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the fused features of a square ``image_size`` input, without
    loading any weights (what a server needs to check uploads); ``(3, S, S)`` for a
    detector that reads pixels."""
    if cfg.pixels:
        return 3, int(image_size), int(image_size)
    model = timm.create_model(cfg.name, pretrained=False, features_only=True,
                              out_indices=tuple(int(i) for i in cfg.layers))
    side = -(-int(image_size) // int(model.feature_info.reduction()[0]))
    return int(sum(model.feature_info.channels())), side, side
