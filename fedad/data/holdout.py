"""Normal training images held out of fitting: for the anomaly threshold (``fedad-predict``)
and for any choice that must not be made on the test set.

Whether an image is held out depends only on the image (its name: the path relative to the
dataset root, :attr:`~fedad.data.sample.SampleRecord.name`, so not on where the data lie)
and the seed, not on which client holds it or how the data are partitioned: the union of
every client's fitted images is exactly what a centralized run fits on, so frozen-feature
detectors federate to the centralized result (PaDiM to float precision)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from fedad.errors import ConfigError


def holdout_draw(path: str, seed: int) -> float:
    """A uniform number in ``[0, 1)`` fixed by ``path`` and ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_split(paths: Sequence[str], fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, held)``: image ``i`` is held out when its draw is below ``fraction``
    (about ``fraction`` of the images); at least one image always stays for fitting.

    Raises:
        ConfigError: ``fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"calibration.holdout must be in [0, 1), got {fraction}")
    draws = np.array([holdout_draw(p, seed) for p in paths], dtype=np.float64)
    held = draws < fraction
    if len(paths) and held.all():
        held[int(np.argmax(draws))] = False
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)
