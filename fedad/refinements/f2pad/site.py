"""``refine=f2pad`` at a site's final evaluation: refine its test maps with the global
summary (nothing new travels), its own pixel prior and its calibrated threshold.

The base mask ``m0`` is cut at the threshold a site can deploy, calibrated on its held-out
normals (:func:`~fedad.evaluation.segmentation.calibrated_threshold`); a site that held
none out refines nothing and says so. With pixel masks the metrics are ``f2pad_iou``,
``f2pad_dice`` (and the base mask's ``f2pad_base_iou``, ``f2pad_base_dice``),
``f2pad_p_auroc``, ``f2pad_pro`` of the ``||a||`` maps inside the region refined and the
base map outside it (:func:`joined_maps`); without masks (image-level-only
data) only the counts and seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedad.config.schema import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.detectors.base import Detector, Scores
from fedad.evaluation.differentiable import RefinedSet
from fedad.evaluation.metrics import pixel_auroc, pro_score
from fedad.evaluation.segmentation import calibrated_threshold, iou_dice
from fedad.features.extractor import FeatureExtractor
from fedad.refinements.f2pad.algorithm import DIVERGED, EMPTY, Units, dilate
from fedad.refinements.f2pad.nearest_init import NearestNormal, from_dataset
from fedad.refinements.f2pad.prior import PixelPrior
from fedad.refinements.f2pad.refinement import F2PAD, fit_prior

log = logging.getLogger("fedad")
PRIOR_IMAGES = 16  # training images a site samples its prior's pixels from


def _stack(dataset: AnomalyDataset, idx: list[int]) -> torch.Tensor:
    return torch.stack([dataset[i].image for i in idx])


def chosen(n: int, limit: int, seed: int) -> list[int]:
    """Indices of the images refined: all, or a seeded subset of ``limit``."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:limit].tolist())


@dataclass
class SiteRefinement:
    """What a site's refinement gives: metrics, the refined set and which test images it
    holds, and what ``fedad-predict`` needs to refine new images (the prior, the
    threshold); ``refined is None`` when nothing could be refined."""

    metrics: dict[str, float]
    refined: RefinedSet | None = None
    indices: list[int] = field(default_factory=list)
    prior: PixelPrior | None = None
    threshold: float | None = None
    nearest: NearestNormal | None = None  # f2pad.init=nearest: the candidates it chose from


def site_prior(cfg: RunConfig, train: AnomalyDataset, info: dict, site: int) -> PixelPrior:
    """The site's pixel prior from a seeded sample of its training images."""
    pick = chosen(len(train), PRIOR_IMAGES, cfg.f2pad.seed + site)
    return fit_prior(_stack(train, pick), cfg.f2pad, Units.of(info["mean"], info["std"]))


def joined_maps(base: torch.Tensor, refined: torch.Tensor, threshold: float,
                dilation: int) -> torch.Tensor:
    """The maps F2PAD's pixel metrics read ``(N, S, S)``: inside the region it optimised
    (the base mask ``base >= threshold`` dilated by ``dilation``) its ``||a||``, offset by
    ``threshold`` so the region ranks above every pixel outside it, and outside the
    region the base detector's map (below ``threshold`` there by construction). The
    refinement only looks inside the region; scoring its map as 0 everywhere else would
    rank the base detector's misses with its true negatives."""
    out = base.detach().float().clone()
    for i in range(len(out)):
        region = dilate(base[i] >= threshold, dilation)
        out[i][region] = float(threshold) + refined[i].float()[region]
    return out


def refine_site(cfg: RunConfig, detector: Detector, summary: Mapping[str, np.ndarray],
                extractor: FeatureExtractor, info: dict, train: AnomalyDataset,
                test: AnomalyDataset, scores: Scores, holdout_maps: torch.Tensor | None,
                site: int) -> SiteRefinement:
    """Refine (a seeded subset of ``f2pad.images`` of) the test set from its ``scores``."""
    f2 = cfg.f2pad
    if holdout_maps is None or len(holdout_maps) == 0:
        log.warning("site %d: refine=f2pad needs held-out normals for its threshold "
                    "(calibration.holdout > 0); nothing refined", site)
        return SiteRefinement({})
    threshold = calibrated_threshold(holdout_maps, cfg.calibration.quantile)
    units = Units.of(info["mean"], info["std"])
    prior = site_prior(cfg, train, info, site)
    idx = chosen(len(test), f2.images, f2.seed)
    images = _stack(test, idx)
    rebuild = None
    if f2.init == "nearest":
        rebuild = from_dataset(train, extractor, f2.nearest_images, f2.seed + site)
    if f2.init == "diffusion":
        from fedad.refinements.f2pad.diffusion_init import diffusion_reconstructor

        rebuild = diffusion_reconstructor(f2.diffusion_run, site, detector, summary,
                                          extractor, cfg.dataset.scored_size(),
                                          algorithm=cfg.diffad)
    refiner = F2PAD(f2, detector, summary, extractor, units, prior, rebuild)
    log.info("site %d: F2PAD on %d test images (base threshold %.4g, calibrated)", site,
             len(idx), threshold)
    out = refiner.refine(images, scores.maps[idx], threshold,
                         names=[test.records[i].path for i in idx])
    metrics: dict[str, float] = {"f2pad_refined": float(len(idx) - out.count(EMPTY)),
                                 "f2pad_empty": float(out.count(EMPTY)),
                                 "f2pad_diverged": float(out.count(DIVERGED))}
    metrics.update({f"f2pad_{k}": v for k, v in out.timing().items()})
    masks = [test[i].mask for i in idx]
    if test.has_masks and all(m is not None for m in masks):
        gt = torch.stack(masks)[:, 0] > 0.5
        if bool(gt.any()) and not bool(gt.all()):
            joined = joined_maps(scores.maps[idx], out.maps, threshold, f2.dilation)
            base = iou_dice(scores.maps[idx] >= threshold, gt)
            ref = iou_dice(out.masks, gt)
            metrics.update({"f2pad_base_iou": base["iou"], "f2pad_base_dice": base["dice"],
                            "f2pad_iou": ref["iou"], "f2pad_dice": ref["dice"],
                            "f2pad_p_auroc": pixel_auroc(joined, gt),
                            "f2pad_pro": pro_score(joined, gt)})
    return SiteRefinement(metrics, out, idx, prior, threshold,
                          rebuild if f2.init == "nearest" else None)
