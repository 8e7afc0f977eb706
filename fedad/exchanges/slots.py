"""Site slots of a personalised exchange's server: each transport key gets the next of
``num_clients`` slots the first time it is seen (RowFed's ``B_m``, APPLE's core models)."""

from __future__ import annotations

from fedad.errors import ConfigError


def slot_of(slots: dict[int, int], key: int, count: int, exchange: str) -> int:
    """Key ``key``'s slot in ``slots`` (assigned, in place, when new)."""
    if key not in slots:
        if len(slots) >= count:
            raise ConfigError(f"exchange={exchange}: more sites than num_clients={count}")
        slots[key] = len(slots)
    return slots[key]
