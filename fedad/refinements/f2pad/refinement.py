"""F2PAD as a refinement of any detector with a differentiable score: a site refines its
base maps with the global summary it already holds and a pixel prior fitted on its own
training pixels (which never leaves it); nothing new travels.

An image whose base mask is empty is returned unchanged and counted (``empty``); one whose
solve meets a non-finite loss keeps its base mask, is named in the log and counted
(``diverged``); neither stops a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedad.detectors.base import Detector
from fedad.detectors.capabilities import PositionalGaussian
from fedad.errors import ConfigError
from fedad.evaluation.differentiable import RefinedSet
from fedad.evaluation.scores import differentiable
from fedad.features.extractor import FeatureExtractor
from fedad.refinements.f2pad.algorithm import (
    DIVERGED,
    EMPTY,
    PAPER_STD,
    Refined,
    Units,
    refine_image,
)
from fedad.refinements.f2pad.config import F2PADConfig
from fedad.refinements.f2pad.prior import PixelPrior, fit_pixel_prior, sample_pixels

log = logging.getLogger("fedad")
PRIOR_REG = (1.0 / (255.0 * PAPER_STD[1])) ** 2

def paper_tolerance(detector: Detector) -> float:
    """The paper's stopping tolerance: 0.1 for PaDiM's Gaussian scores
    (:class:`PositionalGaussian`), 0.05 for every other detector."""
    return 0.1 if isinstance(detector, PositionalGaussian) else 0.05


def fit_prior(images: torch.Tensor, cfg: F2PADConfig, units: Units) -> PixelPrior:
    """The pixel prior (Eq. 9) of a site's normal training ``images`` ``(N, 3, S, S)``
    (backbone-normalised), in the paper's units."""
    pixels = sample_pixels(units.to_paper(images.float()), cfg.prior_pixels, cfg.seed)
    # covariances regularised by one grey level squared (a priori): a grey image's colour
    # directions have no variance at all, and an unbounded inverse would let the prior
    # outweigh every other term
    return fit_pixel_prior(pixels, cfg.components, cfg.seed, reg=PRIOR_REG)


class F2PAD:
    """Refines base maps of ``detector`` against ``summary`` (:mod:`.algorithm`): a
    :class:`~fedad.evaluation.differentiable.Refiner`."""

    def __init__(self, cfg: F2PADConfig, detector: Detector, summary: Mapping[str, np.ndarray],
                 extractor: FeatureExtractor, units: Units, prior: PixelPrior,
                 reconstructor: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        self.cfg = cfg
        self.detector = differentiable(detector)
        self.summary = dict(summary)
        self.extractor = extractor
        self.units = units
        self.prior = prior
        self.tolerance = cfg.tolerance or paper_tolerance(detector)
        if cfg.init in ("diffusion", "nearest") and reconstructor is None:
            raise ConfigError(f"f2pad.init={cfg.init} needs the site's reconstructor (the "
                              "diffusion run's model, or its nearest normal images)")
        self.reconstructor = reconstructor  # init=diffusion|nearest: x -> anomaly-free x

    def refine_one(self, image: torch.Tensor, base_mask: torch.Tensor) -> Refined:
        """Algorithm 1 on one image ``(3, S, S)`` from its base mask ``(S, S)``."""
        return refine_image(image, base_mask, self.extractor, self.detector, self.summary,
                            self.prior, self.cfg, self.units, self.tolerance,
                            self.reconstructor)

    def refine(self, images: torch.Tensor, base_maps: torch.Tensor, threshold: float,
               names: Sequence[str] | None = None) -> RefinedSet:
        """Every image ``(N, 3, S, S)`` from its base map ``(N, S, S)`` cut at
        ``threshold``; progress and diverged images in the log."""
        n = images.shape[0]
        names = list(names) if names is not None else [str(i) for i in range(n)]
        out: list[Refined] = []
        for i in range(n):
            r = self.refine_one(images[i], base_maps[i] >= threshold)
            if r.status == DIVERGED:
                log.warning("f2pad: %s diverged (non-finite loss after %d iterations): its "
                            "base mask is kept", names[i], r.iterations)
            out.append(r)
            if r.status != EMPTY:
                log.info("f2pad: %d/%d %s: %d iterations, %.1f s, %d anomalous pixels",
                         i + 1, n, names[i], r.iterations, r.seconds, int(r.mask.sum()))
        result = RefinedSet(
            masks=torch.stack([r.mask for r in out]) if out else torch.zeros(0, dtype=bool),
            maps=torch.stack([r.amap for r in out]) if out else torch.zeros(0),
            normals=torch.stack([r.normal for r in out]) if out else torch.zeros(0),
            iterations=[r.iterations for r in out], seconds=[r.seconds for r in out],
            status=[r.status for r in out])
        log.info("f2pad: %d images, %d refined, %d with an empty base mask, %d diverged",
                 n, n - result.count(EMPTY) - result.count(DIVERGED), result.count(EMPTY),
                 result.count(DIVERGED))
        return result
