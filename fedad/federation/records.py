"""What travels between a site and the server, without Flower: named sets of arrays
(:data:`Records`, one Flower ``ArrayRecord`` each), a few scalars of instructions
(``config``) and of results (``metrics``). ``clients/`` and ``server/`` wrap these in Flower
records one to one; the in-process transport passes them as they are."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedad.exchanges.records import Arrays, Records, arrays, tensors  # noqa: F401 - re-exported

Scalar = int | float | str | bool

TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"  # message kinds


@dataclass
class Envelope:
    """What the server sends one site: ``records`` and ``config`` (``round``, ``final``,
    ``out``, ``resume-round``, ...)."""

    records: Records = field(default_factory=dict)
    config: dict[str, Scalar | list[str]] = field(default_factory=dict)


@dataclass
class Reply:
    """What a site sends back (``error`` set: it failed, nothing else counts).

    ``key`` is the sender as the transport knows it (a Flower node id, or a site number
    in one process); ``site`` the partition or site id it names in its metrics."""

    key: int
    records: Records = field(default_factory=dict)
    metrics: dict[str, Scalar] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)  # e.g. unreadable files
    error: str | None = None

    @property
    def site(self) -> int | None:
        pid = self.metrics.get("partition-id")
        return None if pid is None else int(pid)

    @property
    def who(self) -> str:
        """``client node <key>``, with its partition once its reply names it."""
        return f"client node {self.key}" + ("" if self.site is None
                                            else f" (partition {self.site})")


def nbytes(records: Records) -> int:
    """Bytes of every array in ``records`` (what travels, before Flower's headers)."""
    return int(sum(np.asarray(v).nbytes for rec in records.values() for v in rec.values()))
