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
from flwr.app import Array, ArrayRecord, Message

from fedad.errors import ConfigError

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


def inject(reply: Message, kinds: Sequence[str]) -> Message:
    """``reply`` with every ArrayRecord it carries corrupted by ``kinds`` (in place)."""
    upload = [k for k in kinds if k != "raise"]
    if not upload or not reply.has_content():
        return reply
    for name, record in list(reply.content.array_records.items()):
        arrays = {k: v.numpy() for k, v in record.items()}
        for kind in upload:
            arrays = {k: corrupt(v, kind) for k, v in arrays.items()}
        reply.content[name] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                           for k, v in arrays.items()})
    return reply
