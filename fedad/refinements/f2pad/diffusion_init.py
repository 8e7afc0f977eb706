"""``f2pad.init=diffusion``: F2PAD's initial normal image from diffad's anomaly-free
reconstruction (seed 003's gradient denoising, :mod:`fedad.detectors.diffad.reconstruct`)
instead of inpainting. The diffusion model is the same site's in a finished diffad run
(``f2pad.diffusion_run``); the score it descends on is the base detector's own against the
summary F2PAD refines with (PaDiM: its Mahalanobis score, as the authors'; any other
detector with a differentiable score: the sum of its map). Nothing new leaves the site."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from fedad.detectors.base import Detector, FeatureShape
from fedad.detectors.capabilities import Reconstructs, describe
from fedad.detectors.diffad.config import DiffADConfig
from fedad.detectors.registry import client_seed, create, detector_class
from fedad.errors import ConfigError
from fedad.evaluation.saved_site import load_run_config, load_site
from fedad.features.extractor import FeatureExtractor

Reconstructor = Callable[[torch.Tensor], torch.Tensor]
# DiffADConfig's fields of the reconstruction (Algorithm 1), not of the trained model
ALGORITHM = ("rounds", "steps", "step_size", "step_rule", "halvings", "denoise_index")


def diffusion_reconstructor(run_dir: str | Path, site: int, detector: Detector,
                            summary: Mapping[str, np.ndarray], extractor: FeatureExtractor,
                            image_size: int, device="cpu",
                            algorithm: DiffADConfig | None = None) -> Reconstructor:
    """``x`` ``(3, S, S)`` (backbone-normalised) -> its reconstruction by site ``site``'s
    diffusion model of the diffad run ``run_dir``, on ``detector``'s score.

    The model is the run's; Algorithm 1's settings (:data:`ALGORITHM`: rounds, steps, step
    rule and size, denoising) are ``algorithm``'s when given (the caller's
    ``cfg.diffad``: a step rule chosen after training applies), else the run's.

    Raises:
        ConfigError: ``run_dir`` is not a finished diffad run of this image size, or holds
            no state for ``site``, naming it.
    """
    from fedad.evaluation.objectives import detector_objective

    try:
        cfg = load_run_config(run_dir)
    except ConfigError as exc:
        raise ConfigError(f"f2pad.diffusion_run: {exc} (a finished diffad run?)") from exc
    if cfg.dataset.scored_size() != image_size:
        raise ConfigError(f"f2pad.diffusion_run={run_dir} has dataset.image_size="
                          f"{cfg.dataset.scored_size()}; the refined images are {image_size} px")
    if not issubclass(detector_class(cfg.detector), Reconstructs):
        raise ConfigError(f"f2pad.diffusion_run={run_dir} is a {cfg.detector} run: its "
                          f"detector reconstructs nothing (it does not declare "
                          f"{describe(Reconstructs)}; a diffad run's does)")
    state, _ = load_site(run_dir, site)
    model = create(cfg, FeatureShape(3, image_size, image_size), device,
                   seed=client_seed(cfg, site))
    model.load_state(state)
    if algorithm is not None:
        model.cfg.diffad = replace(model.cfg.diffad,
                                   **{k: v for k, v in asdict(algorithm).items()
                                      if k in ALGORITHM})
    objective = detector_objective(detector, summary, extractor, model.units(), image_size)

    def rebuild(x: torch.Tensor) -> torch.Tensor:
        return model.reconstruct(x[None], objective)[0].cpu()

    return rebuild
