"""Scoring from images with gradients, and what a refinement's refiner returns.

The fast path scores cached frozen features through faiss without gradients. A refinement
that changes the *image* to explain the anomaly (F2PAD: ``x = n + a``, optimise ``n`` so
that its features score as normal) needs the whole chain differentiable:
images -> frozen backbone (:meth:`~fedad.features.extractor.FeatureExtractor.fuse`, gradients to the
pixels) -> the detector's :meth:`~fedad.detectors.capabilities.Differentiable.score_features`
(torch k-NN or Mahalanobis in place of faiss, the same numbers).

A :class:`Refiner` gets the images, the base detector's maps of them and the threshold
their base masks are cut at, and returns a :class:`RefinedSet` (masks and maps at full
resolution, the estimated normal images). Nothing about the federation changes: a site
refines with the global summary it already holds. How a refinement plugs into the engine
(its config, a site's final evaluation, fedad-predict) is
:class:`fedad.refinements.base.Refinement`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from fedad.detectors.base import Detector, Scores
from fedad.evaluation.scores import differentiable, score
from fedad.features.extractor import FeatureExtractor

__all__ = ["RefinedSet", "Refiner", "differentiable", "score_images"]


def score_images(extractor: FeatureExtractor, detector: Detector, images: torch.Tensor,
                 global_summary: Mapping[str, np.ndarray], image_size: int | None = None
                 ) -> Scores:
    """Scores of normalised images ``(N, 3, S, S)`` with gradients to the pixels."""
    size = int(images.shape[-1]) if image_size is None else int(image_size)
    return score(detector, extractor.fuse(images), global_summary, size, gradients=True)


@dataclass
class RefinedSet:
    """What a refinement gives for ``N`` images: masks ``(N, S, S)`` bool, continuous maps
    ``(N, S, S)`` (raw, at full resolution), the estimated normal images ``(N, 3, S, S)``
    (backbone-normalised) and per image the iterations, seconds and a status (``refined``;
    ``empty``: no base mask, nothing to refine; ``diverged``: the base mask kept)."""

    masks: torch.Tensor
    maps: torch.Tensor
    normals: torch.Tensor
    iterations: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(s == status for s in self.status)

    def timing(self) -> dict[str, float]:
        """Median and p90 of seconds and iterations over the images actually refined."""
        done = [i for i, s in enumerate(self.status) if s != "empty"]
        if not done:
            return {}
        sec = np.asarray([self.seconds[i] for i in done])
        its = np.asarray([self.iterations[i] for i in done])
        return {"seconds_median": float(np.median(sec)),
                "seconds_p90": float(np.quantile(sec, 0.9)),
                "iterations_median": float(np.median(its)),
                "iterations_p90": float(np.quantile(its, 0.9))}


@runtime_checkable
class Refiner(Protocol):
    """What refines a detector's base maps at the pixel level (F2PAD:
    :class:`fedad.refinements.f2pad.refinement.F2PAD`). It is built with what it scores
    with (the detector, the global summary, the frozen backbone: :func:`score_images`
    gives scores with gradients to the pixels) and what its site alone holds (F2PAD's
    pixel prior)."""

    def refine(self, images: torch.Tensor, base_maps: torch.Tensor, threshold: float,
               names: Sequence[str] | None = None) -> RefinedSet:
        """Refined masks and maps of ``images`` ``(N, 3, S, S)`` from their base maps
        ``(N, S, S)``, whose base masks are ``base_maps >= threshold``."""
        ...
