"""Config fields that take one of a few values: :func:`choice` declares one,
:func:`check_choices` checks every such field of a composed config at once (every command
calls it before any process starts), naming the field and what it allows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import field
from typing import Any

from fedad.errors import ConfigError


def choice(default: str, *others: str) -> Any:
    """A string field that takes ``default`` or one of ``others``."""
    return field(default=default, metadata={"choices": (default, *others)})


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values field ``name`` of config dataclass ``cls`` allows."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return tuple(f.metadata["choices"])


def _choice_fields(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Sequence[str]]]:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "choices" in f.metadata:
            yield prefix + f.name, value, f.metadata["choices"]
        elif dataclasses.is_dataclass(value):
            yield from _choice_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _choice_fields(item, f"{prefix}{f.name}[{i}].")


def check_choices(cfg: Any) -> Any:
    """``cfg``, after checking every :func:`choice` field (nested sections included).

    Raises:
        ConfigError: naming every field whose value is not allowed, with what it allows.
    """
    bad = [f"{key}={value!r} is not one of: {', '.join(allowed)}"
           for key, value, allowed in _choice_fields(cfg) if value not in allowed]
    if bad:
        raise ConfigError("; ".join(bad))
    return cfg
