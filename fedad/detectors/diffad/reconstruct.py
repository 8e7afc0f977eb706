"""diffad's anomaly-free reconstruction: gradient denoising (Algorithm 1,
:mod:`fedad.diffusion.gradient_denoise`) with the site's diffusion model, descending on an
objective the caller builds (the authors descend on PaDiM's Mahalanobis score:
:func:`fedad.evaluation.objectives.detector_objective`).
"""

from __future__ import annotations

import torch

from fedad.detectors.diffad.config import DiffADConfig
from fedad.diffusion.gradient_denoise import Objective, gradient_denoise
from fedad.features.levels import Levels


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
