"""Fault injection (``faults=[...]`` in the run config): a client that misbehaves on purpose,
so reliability can be tested through the real Flower runtime and measured
(``benchmarks/reliability.py``). Never set in a real federation.

A fault is ``"<partition>:<kind>[@<round>]"`` (every round without ``@``):

* ``raise``: the client raises before doing any work (Flower returns an error reply);
* ``nan``: every float array of its upload is NaN;
* ``shape``: every array of its upload loses its last column (a wrong-shaped bank/model);
* ``shift``: its upload moved far away (``+ 100`` on every float value: a poisoned bank);
* ``scale``: its upload multiplied by ``100`` (scaled weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedad.errors import ConfigError
from fedad.federation.records import Records

KINDS = ("raise", "nan", "shape", "shift", "scale")
SHIFT = 100.0
SCALE = 100.0


@dataclass(frozen=True)
class Fault:
    partition: int
    kind: str
    round: int | None = None  # None: every round


def parse_faults(specs: Sequence[str]) -> list[Fault]:
    """``["0:nan", "2:raise@2"]`` -> faults.

    Raises:
        ConfigError: a malformed entry, naming it and the expected form.
    """
    out = []
    for spec in specs:
        try:
            pid, rest = spec.split(":", 1)
            kind, _, rnd = rest.partition("@")
            fault = Fault(int(pid), kind.strip(), int(rnd) if rnd else None)
        except ValueError as exc:
            raise ConfigError(f"faults: {spec!r} is not '<partition>:<kind>[@<round>]'") from exc
        if fault.kind not in KINDS:
            raise ConfigError(f"faults: {spec!r}: kind must be one of {', '.join(KINDS)}")
        out.append(fault)
    return out


def active(specs: Sequence[str], partition: int, rnd: int) -> list[str]:
    """The kinds of fault ``partition`` shows in round ``rnd``."""
    return [f.kind for f in parse_faults(specs)
            if f.partition == partition and f.round in (None, rnd)]


def corrupt(values: np.ndarray, kind: str) -> np.ndarray:
    """One uploaded array as fault ``kind`` makes it (integer arrays only lose a column)."""
    if kind == "shape":
        return values[..., :-1] if values.ndim and values.shape[-1] > 1 else values[:0]
    if not np.issubdtype(values.dtype, np.floating):
        return values
    if kind == "nan":
        return np.full_like(values, np.nan)
    if kind == "shift":
        return values + SHIFT
    if kind == "scale":
        return values * SCALE
    return values


def inject(upload: Records, kinds: Sequence[str]) -> Records:
    """``upload`` with every array it carries corrupted by ``kinds``."""
    for kind in (k for k in kinds if k != "raise"):
        upload = {name: {k: np.ascontiguousarray(corrupt(v, kind)) for k, v in rec.items()}
                  for name, rec in upload.items()}
    return upload
