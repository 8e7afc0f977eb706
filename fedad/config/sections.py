"""The config sections of plug-ins: a detector, exchange or refinement that does not live
in :mod:`fedad.config.schema` keeps its dataclass beside its code, declares it in its
class's ``sections`` (``{"toyae": ToyAEConfig}``) and reads it here. A run config holds
the values by section name (``RunConfig.sections``); the composed check
(:func:`fedad.federation.compose.check`) builds every section once, refusing a section no
part of the run declares and keys its dataclass does not have."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fedad.errors import ConfigError

T = TypeVar("T")


def section(cfg: Any, name: str, cls: type[T]) -> T:
    """Section ``name`` of ``cfg`` as ``cls`` (its defaults where the run sets nothing).

    Raises:
        ConfigError: a key ``cls`` does not have or a value of the wrong type, named as
            ``sections.<name>.<key>``.
    """
    from fedad.config.flat import build  # the one codec (flat imports the schema)

    raw = cfg.sections.get(name, {})
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"sections.{name}: expected a mapping of its keys, got {raw!r}")
    return build(cls, raw, f"sections.{name}.")


def check_sections(cfg: Any, declared: Mapping[str, type]) -> None:
    """Every section ``cfg`` sets is one of ``declared`` (name -> dataclass) and builds.

    Raises:
        ConfigError: naming the section nobody declares (and those that are), or the key.
    """
    unknown = sorted(set(cfg.sections) - set(declared))
    if unknown:
        raise ConfigError(f"sections: {', '.join(unknown)} not declared by this run's "
                          "detector, exchange or refinement (they declare: "
                          f"{', '.join(sorted(declared)) or 'none'})")
    for name in cfg.sections:
        section(cfg, name, declared[name])
