"""Several datasets as one: product types are prefixed with their part's name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fedad.data.sample import SampleRecord
from fedad.errors import ConfigError


def prefixed_product_type(part: str, product_type: str) -> str:
    """``("mvtec", "bottle")`` -> ``"mvtec/bottle"``."""
    return f"{part}/{product_type}"


def mixed_records(parts: Sequence[tuple[str, Sequence[SampleRecord]]]) -> list[SampleRecord]:
    """Concatenate the parts' records in order, product type -> ``<part>/<product_type>``.

    Paths, labels, defect types and masks are unchanged, so the same product type coming
    from two sources stays two distinct types.

    Raises:
        ConfigError: a part name is empty or used twice.
    """
    seen: set[str] = set()
    out: list[SampleRecord] = []
    for name, records in parts:
        if not name:
            raise ConfigError("mixed dataset: a part has an empty name")
        if name in seen:
            raise ConfigError(f"mixed dataset: duplicate part name {name!r}")
        seen.add(name)
        out.extend(
            replace(r, product_type=prefixed_product_type(name, r.product_type)) for r in records
        )
    return out
