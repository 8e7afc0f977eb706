"""The contract every local detector keeps (no Flower here): :class:`Detector` fits on a
site's training features and scores test features against a global summary. A run is a
detector x an exchange (:mod:`fedad.detectors.registry`); what an exchange or a refinement
needs of the detector beyond this contract, the detector declares as capabilities
(:mod:`fedad.detectors.capabilities`): a summary that travels (``Summarizes``: the summary
exchange's loop below), a trained module whose weights travel (``Trainable``), a
differentiable score, ...

With the summary exchange (:mod:`fedad.exchanges.summary`) a run is, for any
detector that summarises, the same loop:

* **client**, round ``t``: ``fit(train features, global summary or None, t)``, then
  ``summarize(t)``: the arrays that leave the site (a memory bank, a coreset, Gaussian
  statistics; never images or weights);
* **server**: ``validate(summary, who)`` every upload (a malformed one raises
  :class:`~fedad.errors.BankError` naming ``who`` and is left out), optionally drop outliers
  among the ``descriptor`` s of the valid ones (``robust.enabled``), then
  ``merge(valid summaries, t)`` into the global summary that is sent back;
* **client**, evaluation: ``score(test features, global summary, image_size)`` gives
  anomaly maps and image scores (:class:`Scores`).

Summaries are plain ``dict[str, numpy.ndarray]``: what Flower's ``ArrayRecord`` carries and
what ``numpy.savez`` stores. A detector's client-side state between rounds (a trained head,
its optimiser) is ``state()`` / ``load_state()`` as ``dict[str, torch.Tensor]`` (what
Flower's ``context.state`` keeps, and what a run directory saves for ``fedad-predict``).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from fedad.components.training import TrainHooks, step  # noqa: F401 - the detectors' steps

if TYPE_CHECKING:
    from fedad.config.schema import RunConfig

Summary = dict[str, np.ndarray]
BANK = "bank"  # the array of a summary that holds a memory bank (FedDyMem, PatchCore)


@dataclass
class Scores:
    """Scores of a set of images: ``maps`` ``(N, S, S)`` (anomaly map at the input size)
    and ``image`` ``(N,)``, both raw (never rescaled)."""

    maps: torch.Tensor
    image: torch.Tensor


@dataclass(frozen=True)
class FeatureShape:
    """Geometry of the frozen features a detector consumes: ``(C, H, W)`` per image."""

    channels: int
    height: int
    width: int

    @property
    def positions(self) -> int:
        return self.height * self.width


@dataclass
class FitInfo:
    """What a client reports about its ``fit``: the last epoch's loss (0 for detectors that
    do not train), seconds spent per stage (``train``, ``summarize``, ...), the number of
    optimiser steps, and facts about this site's round that the run's record lists by site
    (rounds.json ``train.site-notes``: a private release's budget, a site that fell back
    to cut-paste defects)."""

    loss: float = 0.0
    seconds: dict[str, float] | None = None
    steps: int = 0
    notes: dict[str, float] | None = None


@dataclass(frozen=True)
class Reads:
    """Which backbone levels a detector reads (``strides``; empty: the ``backbone``
    section's ``layers``) and whether they are 3x3-averaged (``avg_pool``; ``None``: the
    ``backbone`` section's), from the detector's own config section."""

    strides: tuple[int, ...] = ()
    avg_pool: bool | None = None


class Detector(ABC):
    """A local anomaly detector: what every detector does, whatever it exchanges. What it
    can offer beyond this (a summary that travels, a trained module, a differentiable
    score, ...) it declares by inheriting the capabilities of
    :mod:`fedad.detectors.capabilities`.

    Built as ``cls(cfg, shape, device, seed)`` on both sides (a server builds it with no
    features); it keeps ``cfg`` as ``self.cfg``.

    Class attributes:
        name: registry name.
        iterative: ``True`` when rounds change the result (a trained network); a
            frozen-feature detector (``False``) needs exactly one round.
        first_round: ``0`` when round 0 only builds the first summary (FedDyMem's Alg. 4),
            else ``1``.
        inputs: ``"features"`` (the frozen backbone's, through the feature cache) or
            ``"images"`` for a detector that runs a network on the pixels itself (a
            teacher-student network, a diffusion model): it is then handed normalised pixels
            ``(N, 3, S, S)`` and its :class:`FeatureShape` is ``(3, S, S)``.
        sections: a plug-in detector's own config sections, name -> dataclass, kept beside
            its code and read with :func:`fedad.config.sections.section` (the built-in
            detectors' sections are in :mod:`fedad.config.schema`).
    """

    name: ClassVar[str]
    iterative: ClassVar[bool]
    first_round: ClassVar[int] = 1
    inputs: ClassVar[str] = "features"
    sections: ClassVar[dict[str, type]] = {}

    cfg: RunConfig

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise :class:`~fedad.errors.ConfigError` for values of the detector's own config
        section that no run can use (called when a config is composed)."""
        return None

    @classmethod
    def reads(cls, cfg: RunConfig) -> Reads:
        """The backbone levels it reads (default: the ``backbone`` section's)."""
        return Reads()

    @abstractmethod
    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        """Learn from this client's training features ``(N, C, H, W)``."""

    @abstractmethod
    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        """Anomaly maps ``(N, S, S)`` and image scores of ``features`` ``(N, C, H, W)``
        against ``global_summary`` (``{}`` for a network that scores alone)."""

    @abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """What this client needs besides the global summary to score and to go on to the
        next round (FedDyMem: its head and optimiser), as tensors; ``{}`` when nothing."""

    @abstractmethod
    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""


def summary_nbytes(summary: Mapping[str, np.ndarray]) -> int:
    """Bytes of a summary's arrays (what travels, before Flower's small headers)."""
    return int(sum(np.asarray(v).nbytes for v in summary.values()))


def summary_fingerprint(summary: Mapping[str, np.ndarray]) -> bytes:
    """A content key of a summary: every array's name, dtype, shape and bytes (two
    summaries that differ anywhere have different keys)."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(summary):
        part = np.ascontiguousarray(np.asarray(summary[key]))
        h.update(f"{key}:{part.dtype.str}:{part.shape}".encode())
        h.update(memoryview(part).cast("B"))
    return h.digest()
