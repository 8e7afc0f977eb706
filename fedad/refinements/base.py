"""The contract a refinement plugs into the engine with (no Flower here): what it requires
of a detector (capabilities, :mod:`fedad.detectors.capabilities`), the checks of its own
config section, what it does at a site's final evaluation and on new images
(``fedad-predict``), and which of its metrics the server averages over sites. The engine
(:mod:`fedad.federation.site`, :mod:`fedad.federation.server`,
:mod:`fedad.federation.predict`) names no refinement: it asks the registry
(:mod:`fedad.refinements.registry`) for the run's ``refine``.

Add a refinement: a folder ``fedad/refinements/<name>/`` with a subclass of
:class:`Refinement`, one line in :data:`fedad.refinements.registry.REFINEMENTS` (or a plugin module
named in ``plugins`` that adds it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from fedad.config.schema import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.detectors.base import Detector, Scores
from fedad.detectors.capabilities import Capability, Differentiable
from fedad.evaluation.differentiable import RefinedSet
from fedad.features.extractor import FeatureExtractor


@dataclass
class SiteInputs:
    """What a site hands a refinement at its final evaluation: the run config as the site
    uses it, its detector and the summary it scores against, the frozen backbone and its
    normalisation (``info``), its training and test images, the test set's scores, the
    held-out normals' maps (``None``: none held out) and the site's number."""

    cfg: RunConfig
    detector: Detector
    summary: Mapping[str, np.ndarray]
    extractor: FeatureExtractor
    info: dict
    train: AnomalyDataset
    test: AnomalyDataset
    scores: Scores | None
    holdout_maps: torch.Tensor | None
    site: int


@dataclass
class SiteOutcome:
    """What a refinement gives back at a site: metrics (the server averages those named in
    :attr:`Refinement.averaged_keys`, lists those in :attr:`Refinement.site_keys` per
    site) and what it leaves in the site's folder for ``fedad-predict`` (``save``)."""

    metrics: dict[str, float]
    save: Callable[[Path], None] | None = None


class Refinement(ABC):
    """A pixel-level refinement of a detector's maps (F2PAD)."""

    name: ClassVar[str]
    # the detector capabilities it needs (refused when the config is composed otherwise)
    requires: ClassVar[tuple[type[Capability], ...]] = (Differentiable,)
    # metrics averaged over sites in a round's record, and those only listed per site
    averaged_keys: ClassVar[tuple[str, ...]] = ()
    site_keys: ClassVar[tuple[str, ...]] = ()
    # a plug-in refinement's own config sections, name -> dataclass beside its code
    # (fedad.config.sections.section reads them)
    sections: ClassVar[dict[str, type]] = {}

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise :class:`~fedad.errors.ConfigError` for values of its config section no run
        can use (called when a config is composed)."""
        return None

    @classmethod
    @abstractmethod
    def at_site(cls, inputs: SiteInputs) -> SiteOutcome:
        """Refine the site's test maps at its final evaluation."""

    @classmethod
    @abstractmethod
    def on_new_images(cls, site_folder: Path, inputs: SiteInputs, images: torch.Tensor,
                      maps: torch.Tensor, names: Sequence[str]) -> RefinedSet:
        """Refine the maps of new images ``(N, 3, S, S)`` with what :meth:`at_site` left in
        ``site_folder`` (``inputs.train``, ``inputs.test``, ``inputs.scores`` and
        ``inputs.holdout_maps`` are not used there: the new images, ``None`` and ``None``)."""
