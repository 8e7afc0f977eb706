"""Progress lines for long work, through :mod:`logging` (quiet in tests, visible in runs)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("fedad")


def progress(items: Iterable[T], total: int, desc: str, every: float = 10.0) -> Iterator[T]:
    """Yield ``items`` and log ``desc: i/total (pct) elapsed`` about every ``every`` seconds
    and at the end."""
    start = last = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every and i < total:
            last = now
            log.info("%s: %d/%d (%.0f%%) %.0fs", desc, i, total, 100.0 * i / max(total, 1),
                     now - start)
    log.info("%s: %d/%d done in %.1fs", desc, i, total, time.perf_counter() - start)


def setup_logging(verbose: bool = True) -> None:
    """Progress lines of the ``fedad`` logger on stderr, one per event, with a time stamp."""
    if any(getattr(h, "_fedad", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s fedad %(message)s", "%H:%M:%S"))
    handler._fedad = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False
