"""diffad's anomaly-free reconstruction: gradient denoising (Algorithm 1,
:mod:`fedad.diffusion.gradient_denoise`) with the site's diffusion model, on PaDiM's
Mahalanobis score (as the authors' ``reconstruction()``: PaDiM's layers and random
channels, here fedad's PaDiM on its own backbone config).

The PaDiM statistics are whatever the caller holds: a PaDiM fitted on the site's own
normals (nothing leaves the site) or a federated PaDiM run's global summary. Any other
detector with a differentiable score can be descended on too (:func:`detector_objective`:
the sum of its map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from fedad.components.gaussian import squared_mahalanobis
from fedad.config.schema import DiffADConfig
from fedad.detectors.base import Detector
from fedad.detectors.padim.detector import PaDiM
from fedad.detectors.padim.statistics import position_rows
from fedad.diffusion.gradient_denoise import Objective, gradient_denoise
from fedad.features.extractor import FeatureExtractor
from fedad.features.levels import Levels


def padim_objective(padim: PaDiM, summary: Mapping[str, np.ndarray],
                    extractor: FeatureExtractor, units: Levels) -> Objective:
    """Images in ``[-1, 1]`` -> their PaDiM score, the sum over positions of the squared
    Mahalanobis distance (Eq. 2 squared, F2PAD's Eq. 7 on the whole image), per image;
    differentiable in the images. ``units`` converts ``[-1, 1]`` to the backbone's
    normalisation."""
    mean, inv = padim.model(dict(summary))

    def objective(x: torch.Tensor) -> torch.Tensor:
        features = extractor.fuse(units.from_unit(x))
        rows = position_rows(features, padim.idx).transpose(0, 1)  # (P, B, d)
        return squared_mahalanobis(rows, mean, inv).sum(0)

    return objective


# detector name -> its own objective (Algorithm 1 as the authors run it); any other
# differentiable detector: the sum of its score map
OBJECTIVES: dict[str, Callable[..., Objective]] = {"padim": padim_objective}


def detector_objective(detector: Detector, summary: Mapping[str, np.ndarray],
                       extractor: FeatureExtractor, units: Levels,
                       image_size: int) -> Objective:
    """Images in ``[-1, 1]`` -> ``detector``'s score per image against ``summary``,
    differentiable (PaDiM: :func:`padim_objective`; others: their map summed).

    Raises:
        ConfigError: the detector has no differentiable score, naming it.
    """
    from fedad.evaluation.scores import differentiable

    own = OBJECTIVES.get(getattr(detector, "name", ""))
    if own is not None:
        return own(detector, summary, extractor, units)
    scorer = differentiable(detector)
    summary = dict(summary)

    def objective(x: torch.Tensor) -> torch.Tensor:
        features = extractor.fuse(units.from_unit(x))
        return scorer.score_features(features, summary, image_size).maps.sum((1, 2))

    return objective


def reconstruct(images: torch.Tensor, unet: torch.nn.Module, abar: torch.Tensor,
                objective: Objective, units: Levels, cfg: DiffADConfig,
                desc: str | None = None) -> torch.Tensor:
    """The anomaly-free reconstructions of normalised ``images`` ``(B, 3, S, S)``, in the
    same normalisation (``diffad.rounds`` rounds of ``diffad.steps`` steps of size
    ``diffad.step_size`` by ``diffad.step_rule``, denoised at ``diffad.denoise_index`` of
    a ``diffad.chain`` chain)."""
    x = units.to_unit(images.float())
    out = gradient_denoise(x, objective, unet, abar, cfg.rounds, cfg.steps, cfg.step_size,
                           cfg.denoise_index, cfg.chain, desc, cfg.step_rule, cfg.halvings)
    return units.from_unit(out)
