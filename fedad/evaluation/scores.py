"""The one way to score a set of features with a detector, for every caller: a site's
evaluation (test, validation and held-out splits, :mod:`fedad.federation.site`),
``fedad-predict``, the in-process runner (through the site) and refinements that need
gradients (:mod:`fedad.evaluation.differentiable`). Scores that every simulated site would
compute identically are reused through
:func:`fedad.evaluation.shared_scores.score_shared`, which calls this.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedad.detectors.base import Detector, Scores
from fedad.detectors.capabilities import Differentiable, require


def differentiable(detector: Detector) -> Differentiable:
    """``detector`` if it scores with gradients.

    Raises:
        ConfigError: naming the detector, when it does not declare
            :class:`~fedad.detectors.capabilities.Differentiable`.
    """
    return require(detector, Differentiable, "a score with gradients (a refinement, "
                   "an export)")


def score(detector: Detector, features: torch.Tensor, summary: Mapping[str, np.ndarray],
          image_size: int, gradients: bool = False) -> Scores:
    """Anomaly maps ``(N, S, S)`` and image scores of ``features`` ``(N, C, H, W)`` against
    ``summary``: the fast path (faiss, no gradients), or with ``gradients`` the detector's
    torch path (:meth:`~fedad.detectors.capabilities.Differentiable.score_features`, the same
    numbers within float32 rounding, gradients to the features)."""
    if gradients:
        return differentiable(detector).score_features(features, dict(summary), image_size)
    return detector.score(features, dict(summary), image_size)
