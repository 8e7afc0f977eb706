"""The whole check of a composed run config, what every entry point calls before any
process starts: the choices, the detector x exchange pair and their own sections
(:func:`fedad.detectors.registry.check`) and the refinement with its section
(:func:`fedad.refinements.check`), and the plug-ins' own sections
(:func:`fedad.config.sections.check_sections`). Each registry checks what it holds; this
only puts them together."""

from __future__ import annotations

import copy

from fedad.config.schema import RunConfig
from fedad.config.sections import check_sections
from fedad.detectors import registry
from fedad.exchanges.registry import exchange_class
from fedad.refinements.registry import check as check_refinement
from fedad.refinements.registry import refinement_for


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` (unchanged) once every part of it is checked.

    Raises:
        ConfigError: naming the field(s), the capability or the values they allow.
    """
    registry.check(cfg)
    resolved = registry.resolve(copy.deepcopy(cfg))
    refinement = refinement_for(resolved)
    check_sections(resolved, {**registry.detector_class(resolved.detector).sections,
                              **exchange_class(resolved.exchange).sections,
                              **(refinement.sections if refinement else {})})
    check_refinement(cfg)
    return cfg
