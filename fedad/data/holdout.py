"""Normal training images held out of fitting, per client: for the anomaly threshold
(``fedad-predict``) and for any choice that must not be made on the test set."""

from __future__ import annotations

import numpy as np

from fedad.errors import ConfigError


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, held)`` of ``n`` training images: ``floor(fraction * n)`` images,
    drawn with ``seed``, are held out; at least one image always stays for fitting.

    Raises:
        ConfigError: ``fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"calibration.holdout must be in [0, 1), got {fraction}")
    k = min(int(np.floor(fraction * n)), max(n - 1, 0))
    order = np.random.default_rng(int(seed)).permutation(n)
    held = np.sort(order[:k])
    fit = np.sort(order[k:])
    return fit.astype(np.int64), held.astype(np.int64)
