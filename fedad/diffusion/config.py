"""The DDPM's config section (``ddpm``; asymst's defect generator and diffad's network),
read into :class:`fedad.config.schema.RunConfig` (a plain dataclass: layer 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


@dataclass
class DDPMConfig:
    """The DDPM trained on normal images only (``fedad/diffusion/``, Ho et al. 2020): a
    ``diffusers`` UNet without attention, federated by the run's weight exchange. Its size,
    steps and rates come from the detector's step budget (``budget=cpu``: sized for 2 CPU
    cores; ``budget=paper``: the reference's) wherever the run leaves them unset."""

    # 0 / empty: the value of the run's budget preset (`budget`; the detector's budgets.py)
    crop: int = 0  # training crops (px) of the images at the detector's input size
    channels: list[int] = field(default_factory=list)  # UNet levels' channels
    layers_per_block: int = 1
    groups: int = 8  # GroupNorm groups
    timesteps: int = 1000  # T (Ho et al.)
    schedule: str = choice("linear", "squaredcos_cap_v2")  # beta_t: 1e-4..0.02 | cosine
    steps: int = 0  # the DDPM's optimiser steps (its phase of the budget)
    batch_size: int = 0
    lr: float = 0.0
    ema: float = -1.0  # EMA decay of the weights scored (0: none; -1: the preset's)
