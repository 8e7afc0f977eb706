"""Robust aggregation: which uploads of a round are outliers against the others (no Flower
here). See :class:`fedad.config.schema.RobustConfig` for the rule and why it departs from the
paper (FedDyMem trusts every client)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this = its standard deviation


@dataclass(frozen=True)
class OutlierVerdict:
    """Distances ``d_i`` of each upload's vector to the coordinate-wise median, the
    threshold, and which uploads are kept (``keep[i]``)."""

    distances: np.ndarray
    threshold: float
    keep: np.ndarray

    def reason(self, i: int) -> str:
        med = float(np.median(self.distances))
        return (f"robust aggregation: distance {self.distances[i]:.4g} to the coordinate-wise "
                f"median of the uploads exceeds the threshold {self.threshold:.4g} "
                f"(median distance {med:.4g})")


def median_outliers(vectors: Sequence[np.ndarray], k: float = 3.0,
                    spread: float = 0.5) -> OutlierVerdict:
    """Uploads whose vector ``v_i`` lies farther than ``max(median(d) + k * 1.4826 * MAD(d),
    spread * |m|)`` from the coordinate-wise median ``m`` (``d_i = |v_i - m|``;
    :class:`~fedad.config.schema.RobustConfig`).
    With fewer than 3 vectors the median is not robust: all are kept.

    Raises:
        ValueError: vectors of different lengths, or a non-finite vector.
    """
    if not vectors:
        return OutlierVerdict(np.zeros(0), float("inf"), np.zeros(0, dtype=bool))
    sizes = {np.asarray(v).size for v in vectors}
    if len(sizes) != 1:
        raise ValueError(f"robust aggregation: upload vectors differ in length ({sorted(sizes)})")
    x = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    if not np.isfinite(x).all():
        raise ValueError("robust aggregation: a non-finite vector (validate uploads first)")
    m = np.median(x, axis=0)
    d = np.linalg.norm(x - m, axis=1)
    if len(d) < 3:
        return OutlierVerdict(d, float("inf"), np.ones(len(d), dtype=bool))
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med)))
    threshold = max(med + k * MAD_TO_SIGMA * mad, spread * float(np.linalg.norm(m)))
    return OutlierVerdict(d, threshold, d <= threshold)


