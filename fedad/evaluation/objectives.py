"""What a reconstruction descends on: a detector's score of whole images, differentiable in
the pixels (diffad's gradient denoising, Algorithm 1 of seed 003; F2PAD's diffusion start).

Which objective a detector gets follows from the capabilities it declares
(:mod:`fedad.detectors.capabilities`): one Gaussian per position
(:class:`~fedad.detectors.capabilities.PositionalGaussian`, PaDiM) gives the authors'
objective, the summed squared Mahalanobis distance (:func:`gaussian_objective`); any other
:class:`~fedad.detectors.capabilities.Differentiable` detector, the sum of its score map.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedad.components.gaussian import squared_mahalanobis
from fedad.components.rows import position_rows
from fedad.detectors.base import Detector
from fedad.detectors.capabilities import PositionalGaussian
from fedad.diffusion.gradient_denoise import Objective
from fedad.evaluation.scores import differentiable
from fedad.features.extractor import FeatureExtractor
from fedad.features.levels import Levels


def gaussian_objective(detector: PositionalGaussian, summary: Mapping[str, np.ndarray],
                       extractor: FeatureExtractor, units: Levels) -> Objective:
    """Images in ``[-1, 1]`` -> the sum over positions of their squared Mahalanobis distance
    to ``detector``'s Gaussians of ``summary`` (PaDiM's Eq. 2 squared, F2PAD's Eq. 7 on the
    whole image), per image; differentiable in the images. ``units`` converts ``[-1, 1]``
    to the backbone's normalisation."""
    mean, inv = detector.gaussians(summary)
    idx = detector.channel_subset()

    def objective(x: torch.Tensor) -> torch.Tensor:
        features = extractor.fuse(units.from_unit(x))
        rows = position_rows(features, idx).transpose(0, 1)  # (P, B, d)
        return squared_mahalanobis(rows, mean, inv).sum(0)

    return objective


def detector_objective(detector: Detector, summary: Mapping[str, np.ndarray],
                       extractor: FeatureExtractor, units: Levels,
                       image_size: int) -> Objective:
    """Images in ``[-1, 1]`` -> ``detector``'s score per image against ``summary``,
    differentiable (:func:`gaussian_objective`, or the sum of the score map).

    Raises:
        ConfigError: the detector has no differentiable score, naming it.
    """
    if isinstance(detector, PositionalGaussian):
        return gaussian_objective(detector, summary, extractor, units)
    scorer = differentiable(detector)
    summary = dict(summary)

    def objective(x: torch.Tensor) -> torch.Tensor:
        features = extractor.fuse(units.from_unit(x))
        return scorer.score_features(features, summary, image_size).maps.sum((1, 2))

    return objective
