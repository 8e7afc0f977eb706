"""F2PAD as the engine's refinement (``refine=f2pad``, :class:`F2PADRefinement`): its
config checks, a site's final evaluation (:func:`~fedad.refinements.f2pad.site.refine_site`,
leaving the site's pixel prior and threshold in its folder) and new images
(``fedad-predict``, from what the site left)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.evaluation.differentiable import RefinedSet
from fedad.refinements.base import Refinement, SiteInputs, SiteOutcome

COUNTS = ("components", "max_iterations", "k_s", "candidates")  # >= 1
NON_NEGATIVE = ("alpha1", "alpha2", "beta0", "lr", "clip", "gamma0", "tolerance",
                "mask_threshold", "dilation", "margin", "images", "opening", "patience",
                "min_iterations", "nearest_images")


class F2PADRefinement(Refinement):
    """Seed 002's feature-to-pixel refinement of a differentiable detector's maps."""

    name = "f2pad"
    averaged_keys = ("f2pad_base_iou", "f2pad_base_dice", "f2pad_iou", "f2pad_dice",
                     "f2pad_p_auroc", "f2pad_pro")
    site_keys = ("f2pad_refined", "f2pad_empty", "f2pad_diverged", "f2pad_seconds_median",
                 "f2pad_iterations_median")

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        f2 = cfg.f2pad
        values = asdict(f2)
        bad = [k for k in COUNTS if values[k] < 1] + [k for k in NON_NEGATIVE
                                                       if values[k] < 0]
        if bad:
            raise ConfigError("f2pad: " + ", ".join(f"{k}={values[k]}" for k in bad)
                              + " out of range (counts >= 1, weights and sizes >= 0)")
        if f2.init == "diffusion" and not f2.diffusion_run:
            raise ConfigError("f2pad.init=diffusion needs f2pad.diffusion_run: a finished "
                              "diffad run whose site models reconstruct the initial image")

    @classmethod
    def at_site(cls, inputs: SiteInputs) -> SiteOutcome:
        from fedad.refinements.f2pad.prior import save_prior
        from fedad.refinements.f2pad.site import refine_site  # scipy, skimage when asked

        out = refine_site(inputs.cfg, inputs.detector, inputs.summary, inputs.extractor,
                          inputs.info, inputs.train, inputs.test, inputs.scores,
                          inputs.holdout_maps, inputs.site)
        if out.prior is None:
            return SiteOutcome(out.metrics)
        prior, threshold, nearest = out.prior, float(out.threshold), out.nearest

        def save(folder: Path) -> None:
            save_prior(folder, prior, threshold)
            if nearest is not None:
                from fedad.refinements.f2pad.nearest_init import save_candidates

                save_candidates(folder, nearest)

        return SiteOutcome(out.metrics, save)

    @classmethod
    def on_new_images(cls, site_folder: Path, inputs: SiteInputs, images: torch.Tensor,
                      maps: torch.Tensor, names: Sequence[str]) -> RefinedSet:
        """With the site's pixel prior and pixel threshold, saved by a ``refine=f2pad``
        run in its folder.

        Raises:
            ConfigError: the site's folder has no prior (the run was not refine=f2pad).
        """
        from fedad.refinements.f2pad.algorithm import Units
        from fedad.refinements.f2pad.prior import load_prior
        from fedad.refinements.f2pad.refinement import F2PAD

        prior, threshold = load_prior(site_folder)
        cfg = inputs.cfg
        rebuild = None
        if cfg.f2pad.init == "nearest":
            from fedad.refinements.f2pad.nearest_init import load_candidates

            rebuild = load_candidates(site_folder, inputs.extractor,
                                      cfg.dataset.scored_size(), inputs.info["mean"],
                                      inputs.info["std"])
        if cfg.f2pad.init == "diffusion":
            from fedad.refinements.f2pad.diffusion_init import diffusion_reconstructor

            rebuild = diffusion_reconstructor(cfg.f2pad.diffusion_run, inputs.site,
                                              inputs.detector, inputs.summary,
                                              inputs.extractor, cfg.dataset.scored_size(),
                                              algorithm=cfg.diffad)
        refiner = F2PAD(cfg.f2pad, inputs.detector, inputs.summary, inputs.extractor,
                        Units.of(inputs.info["mean"], inputs.info["std"]), prior, rebuild)
        return refiner.refine(images, maps, threshold, names=list(names))
