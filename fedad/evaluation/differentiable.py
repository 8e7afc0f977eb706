"""Scoring from images with gradients, and the hook a refinement plugs into.

The fast path scores cached frozen features through faiss without gradients. A refinement
that changes the *image* to explain the anomaly (F2PAD: ``x = n + a``, optimise ``n`` so
that its features score as normal) needs the whole chain differentiable:
images -> frozen backbone (:meth:`~fedad.features.extractor.FeatureExtractor.fuse`, gradients to the
pixels) -> the detector's :meth:`~fedad.detectors.base.DifferentiableDetector.score_features`
(torch k-NN or Mahalanobis in place of faiss, the same numbers).

A :class:`Refinement` gets the images, the base detector's scores of them and a function
that scores any images differentiably, and returns the scores it refines (maps at full
resolution, image scores). Nothing about the federation changes: a site refines with the
global summary it already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from fedad.detectors.base import Detector, Scores
from fedad.evaluation.scores import differentiable, score
from fedad.features.extractor import FeatureExtractor

__all__ = ["Refinement", "differentiable", "refined_scores", "score_images"]

ScoreFn = Callable[[torch.Tensor], Scores]


def score_images(extractor: FeatureExtractor, detector: Detector, images: torch.Tensor,
                 global_summary: Mapping[str, np.ndarray], image_size: int | None = None
                 ) -> Scores:
    """Scores of normalised images ``(N, 3, S, S)`` with gradients to the pixels."""
    size = int(images.shape[-1]) if image_size is None else int(image_size)
    return score(detector, extractor.fuse(images), global_summary, size, gradients=True)


@runtime_checkable
class Refinement(Protocol):
    """What wraps a detector's differentiable score (F2PAD's pixel-level refinement)."""

    def refine(self, images: torch.Tensor, base: Scores, score: ScoreFn) -> Scores:
        """Refined scores of ``images`` from the base scores and ``score`` (images ->
        differentiable :class:`Scores`)."""
        ...


def refined_scores(extractor: FeatureExtractor, detector: Detector, images: torch.Tensor,
                   global_summary: Mapping[str, np.ndarray], refinement: Refinement,
                   image_size: int | None = None) -> Scores:
    """The base detector's scores of ``images``, refined by ``refinement``."""
    summary = dict(global_summary)

    def scored(x: torch.Tensor) -> Scores:
        return score_images(extractor, detector, x, summary, image_size)

    with torch.no_grad():
        base = scored(images)
    return refinement.refine(images, base, scored)
