"""``detector=anomalib``'s own config section (``sections.anomalib``), beside its code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AnomalibConfig:
    """Which anomalib model a site runs and with what.

    ``model``: anomalib's name for it (``stfpm``, ``draem``, ``fre``, ``padim``,
    ``patchcore``; :data:`fedad.detectors.anomalib.models.MODELS`). ``init``: the model's
    own ``__init__`` arguments (anomalib's names; ``backbone`` and ``layers`` default to
    fedad's ``backbone`` section: its ``name`` and the timm modules of its ``layers``).
    ``steps``: a trained model's optimiser steps per site (0: its ``budget`` preset's,
    :data:`~fedad.detectors.anomalib.models.STEPS`), taken ``train.local_steps`` a round.
    ``batch_size``: images per step (0: ``train.batch_size``)."""

    model: str = "padim"
    init: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    batch_size: int = 0
