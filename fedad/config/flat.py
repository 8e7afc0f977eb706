"""RunConfig <-> a flat mapping of dotted keys to scalars (Flower's run config).

Flower's run config holds only ``str``, ``int``, ``float`` and ``bool`` values under dotted
keys (``train.local_epochs``). Lists of scalars travel as comma-separated strings
(``"brick,grass,gravel"``), lists of dataclasses (``dataset.parts``) as JSON, ``None`` as
``""``. The dataclass defaults stay the one source of truth: ``pyproject.toml``'s
``[tool.flwr.app.config]`` is generated from :func:`to_flat` (see :func:`toml_table`) and a
test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from fedad.config.fields import check_choices
from fedad.config.schema import RunConfig
from fedad.detectors.feddymem.config import MOVED_TO_FEDDYMEM
from fedad.errors import ConfigError

Scalar = str | int | float | bool


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _encode(value: Any) -> Scalar:
    if value is None:
        return ""
    if isinstance(value, Mapping):  # the plugins' sections: one JSON string
        return json.dumps(_plain(value), sort_keys=True) if value else ""
    if isinstance(value, list):
        if value and dataclasses.is_dataclass(value[0]):
            return json.dumps([dataclasses.asdict(v) for v in value])
        return ",".join(str(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Dataclasses (a section already built) as dicts, for JSON."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_flat(cfg: Any, prefix: str = "") -> dict[str, Scalar]:
    """Flatten a config dataclass into ``{"dotted.key": scalar}``."""
    out: dict[str, Scalar] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value, key + "."))
        else:
            out[key] = _encode(value)
    return out


def _decode(raw: Scalar, tp: Any, key: str) -> Any:
    tp, optional = _strip_optional(tp)
    if optional and (raw is None or raw == ""):
        return None
    origin = typing.get_origin(tp)
    try:
        if origin is dict:  # the plugins' sections: JSON (a string) or a mapping
            value = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping)
                                                         for v in value.values()):
                raise ValueError(raw)
            return {str(k): _plain(v) for k, v in value.items()}
        if origin is list:
            (item,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item):
                items = (json.loads(raw) if isinstance(raw, str) and raw else raw) or []
                return [_build(item, d, f"{key}[{i}]") for i, d in enumerate(items)]
            if isinstance(raw, list):
                return [item(v) for v in raw]
            return [item(v.strip()) for v in str(raw).split(",") if v.strip()]
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes"):
                return True
            if str(raw).lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if tp is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        return tp(raw)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"run config {key}={raw!r}: not a valid {tp}") from exc


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name not in data:
            continue
        value = data[f.name]
        kwargs[f.name] = (_build(tp, value, f"{prefix}{f.name}.")
                          if dataclasses.is_dataclass(tp) and isinstance(value, Mapping)
                          else _decode(value, tp, prefix + f.name))
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        names = ", ".join(prefix + k for k in sorted(unknown))
        raise ConfigError(f"unknown config key(s): {names}")
    return cls(**kwargs)


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls`` (a config dataclass) from a nested mapping of its keys; ``prefix`` names
    them in errors (``sections.toyae.``).

    Raises:
        ConfigError: a key ``cls`` does not have, a value of the wrong type or a choice
            it does not allow.
    """
    return check_choices(_build(cls, data, prefix))


def _migrate(nested: dict[str, Any], cls: type) -> dict[str, Any]:
    """Old keys read as their new names: FedDyMem's knobs under ``train`` (before they had
    their own ``feddymem`` section) move there, unless the new key is given too."""
    train = nested.get("train")
    if not (isinstance(cls, type) and issubclass(cls, RunConfig)) or not isinstance(
            train, Mapping):
        return nested
    moved = {k: train[k] for k in MOVED_TO_FEDDYMEM if k in train}
    if not moved:
        return nested
    out = dict(nested)
    out["train"] = {k: v for k, v in train.items() if k not in moved}
    out["feddymem"] = {**moved, **dict(nested.get("feddymem") or {})}
    return out


def migrated_override(item: str) -> str:
    """``train.reduce=coreset`` (an old override) as ``feddymem.reduce=coreset``."""
    key, sep, value = item.partition("=")
    head, _, leaf = key.lstrip("+~").partition(".")
    if sep and head == "train" and leaf in MOVED_TO_FEDDYMEM:
        return f"feddymem.{leaf}={value}"
    return item


def from_flat(flat: Mapping[str, Scalar], cls: type = RunConfig) -> Any:
    """Build the config dataclass from dotted keys; missing keys keep their defaults.

    Raises:
        ConfigError: a key that is not a config field, a value of the wrong type, or a
            choice field (:func:`~fedad.config.fields.choice`) set to a value it does not allow.
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"run config key {key!r} clashes with a scalar key")
        node[leaf] = value
    return check_choices(_build(cls, _migrate(nested, cls), ""))


def fill_defaults(cfg: Any, values: Mapping[str, Any], where: str) -> list[str]:
    """Set each dotted key of ``values`` that ``cfg`` leaves at its dataclass default (a
    budget preset's way: a value the run sets itself wins), in place; returns the keys
    set.

    Raises:
        ConfigError: a key that is not a config field, named with ``where``.
    """
    flat, defaults = to_flat(cfg), to_flat(type(cfg)())
    unknown = sorted(set(values) - set(flat))
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)} not config keys")
    keys = [k for k in values if flat[k] == defaults[k]]
    if keys:
        new = from_flat({**flat, **{k: _encode(values[k]) for k in keys}}, type(cfg))
        for f in dataclasses.fields(cfg):
            setattr(cfg, f.name, getattr(new, f.name))
    return keys


def toml_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def toml_table(cfg: RunConfig | None = None, header: str | None = "tool.flwr.app.config"
               ) -> str:
    """``cfg`` (default: the defaults) as TOML: the ``[tool.flwr.app.config]`` table of
    ``pyproject.toml``, or with ``header=None`` the bare keys of a ``run_config.toml``
    (what ``flwr run`` takes; the one codec for both)."""
    lines = [f"[{header}]"] if header else []
    for key, value in to_flat(cfg or RunConfig()).items():
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def from_dict(data: Mapping[str, Any], cls: type = RunConfig) -> Any:
    """Build the config dataclass from a nested mapping (e.g. a run's ``config.json``).

    Raises:
        ConfigError: a key that is not a config field, or a value of the wrong type.
    """
    return check_choices(_build(cls, _migrate(dict(data), cls), ""))
