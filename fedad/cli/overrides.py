"""Hydra-style ``key=value`` overrides onto the typed :class:`~fedad.config.RunConfig`."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedad.config import RunConfig
from fedad.detectors.registry import check
from fedad.errors import ConfigError


def compose(overrides: Sequence[str] = (), base: RunConfig | None = None) -> RunConfig:
    """``RunConfig`` defaults (or ``base``) updated by dotted overrides such as
    ``train.local_epochs=3 dataset.name=mtd dataset.root=/abs/mtd``.

    Raises:
        ConfigError: naming the override that is unknown or has the wrong type, or a
            choice field set to a value it does not allow (with the values it allows).
    """
    cfg = OmegaConf.structured(base or RunConfig())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {exc.msg if hasattr(exc, 'msg') else exc}"
                              ) from exc
    return check(OmegaConf.to_object(cfg))
