"""The one list of refinements: what refines a detector's maps at the pixel level, at a
site's final evaluation and on new images (``refine=<name>``). Everything that depends on
*which* refinement a run uses asks here; the engine names none.

Add a refinement: a folder with a subclass of :class:`~fedad.refinements.base.Refinement`
and one line in :data:`REFINEMENTS` (or ``REFINEMENTS["name"] = "module:Class"`` in a
plugin module named in ``plugins``).
"""

from __future__ import annotations

import importlib

from fedad.config.schema import RunConfig
from fedad.detectors.capabilities import describe, missing
from fedad.detectors.registry import detector_class, load_plugins, resolve
from fedad.errors import ConfigError
from fedad.refinements.base import Refinement

NONE = "none"  # refine=none: the detector's maps as they are

# name -> "module:Class" (imported on first use: scipy and scikit-image only when asked)
REFINEMENTS: dict[str, str] = {
    "f2pad": "fedad.refinements.f2pad.plugin:F2PADRefinement",
}


def refinement_class(name: str) -> type[Refinement]:
    """The class registered under ``name``."""
    if name not in REFINEMENTS:
        raise ConfigError(f"refine must be one of {', '.join((NONE, *REFINEMENTS))}, got "
                          f"{name!r}")
    module, cls = REFINEMENTS[name].split(":")
    return vars(importlib.import_module(module))[cls]


def refinement_for(cfg: RunConfig) -> type[Refinement] | None:
    """The run's refinement (``None``: ``refine=none``)."""
    load_plugins(cfg)
    return None if cfg.refine == NONE else refinement_class(cfg.refine)


def check(cfg: RunConfig) -> None:
    """The run's refinement exists, its detector declares what it requires and its own
    config section is in range.

    Raises:
        ConfigError: naming the refinement, the capability or the field.
    """
    cls = refinement_for(cfg)
    if cls is None:
        return
    detector = resolve(cfg).detector
    lacks = missing(detector_class(detector), cls.requires)
    if lacks:
        raise ConfigError(f"refine={cfg.refine} requires "
                          + "; ".join(describe(c) for c in lacks)
                          + f", which detector={detector} does not declare")
    cls.check_config(cfg)


def metric_keys(cfg: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The run's refinement's averaged and per-site metric names (none without one)."""
    cls = refinement_for(cfg)
    return ((), ()) if cls is None else (cls.averaged_keys, cls.site_keys)
