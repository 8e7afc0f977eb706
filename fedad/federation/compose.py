"""The whole check of a composed run config, what every entry point calls before any
process starts: the choices, the detector x exchange pair and their own sections
(:func:`fedad.detectors.registry.check`) and the refinement with its section
(:func:`fedad.refinements.check`). Each registry checks what it holds; this only puts them
together."""

from __future__ import annotations

from fedad.config.schema import RunConfig
from fedad.detectors import registry
from fedad.refinements import check as check_refinement


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` (unchanged) once every part of it is checked.

    Raises:
        ConfigError: naming the field(s), the capability or the values they allow.
    """
    registry.check(cfg)
    check_refinement(cfg)
    return cfg
