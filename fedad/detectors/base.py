"""The contract every local detector implements (no Flower here). A run is a detector x an
exchange (:mod:`fedad.detectors.registry`); with the summary exchange
(:mod:`fedad.federation.exchanges.summary`) a run is, for any detector, the same loop:

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
A detector with a trainable module (:class:`TrainableDetector`) can also be federated by
the weight exchanges, which move ``module()``'s weights instead of a summary.

``validate`` and ``merge`` are pure: they read only the detector's configuration and the
feature geometry (:class:`FeatureShape`), never client state, so the server builds the same
class with no features at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

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
    do not train), seconds spent per stage (``train``, ``summarize``, ...) and the number of
    optimiser steps and their learning rate (SCAFFOLD's control update divides by both)."""

    loss: float = 0.0
    seconds: dict[str, float] | None = None
    steps: int = 0
    lr: float | None = None  # the steps' learning rate when not train.lr (SCAFFOLD reads it)
    # facts about this site's round that the run's record lists by site (rounds.json
    # "train.site-notes"), e.g. asymst's {"synthesis-fallback": 1}
    notes: dict[str, float] | None = None


@dataclass
class TrainHooks:
    """What a weight exchange changes in a trained detector's optimiser steps: the
    detector's loss is weighted by ``task_weight`` (FedPHP's ``1 - lambda``),
    ``extra_loss(module)`` is added to every step's loss (FedProx's proximal term),
    ``after_backward(module)`` may change the gradients before the step (SCAFFOLD's
    correction), ``after_step(module)`` may change the weights after it (RowFed's sparsity
    prox). A detector's training loop calls them through :func:`step`."""

    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None
    task_weight: float = 1.0
    after_backward: Callable[[torch.nn.Module], None] | None = None
    after_step: Callable[[torch.nn.Module], None] | None = None


def step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
         hooks: TrainHooks | None = None) -> None:
    """One optimiser step on ``loss`` with the exchange's ``hooks`` applied."""
    if hooks is not None and hooks.task_weight != 1.0:
        loss = hooks.task_weight * loss
    if hooks is not None and hooks.extra_loss is not None:
        loss = loss + hooks.extra_loss(module)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if hooks is not None and hooks.after_backward is not None:
        hooks.after_backward(module)
    optimizer.step()
    if hooks is not None and hooks.after_step is not None:
        with torch.no_grad():
            hooks.after_step(module)


@runtime_checkable
class Detector(Protocol):
    """A local anomaly detector federated by exchanging what it summarises.

    Class attributes:
        name: registry name (``feddymem``, ``patchcore``, ``padim``).
        iterative: ``True`` when rounds change the result (a trained head); a frozen-feature
            detector (``False``) needs exactly one round.
        first_round: ``0`` when round 0 only builds the first summary (FedDyMem's Alg. 4),
            else ``1``.
        exchanges: the exchanges it can be federated by (:mod:`fedad.detectors.registry`
            refuses any other pair when a config is composed); weight exchanges need a
            :class:`TrainableDetector`.
        inputs (optional, default ``"features"``): ``"images"`` for a detector that runs
            the backbone itself (a teacher-student network, a diffusion model): what it is
            handed as ``features`` is then the normalised pixels ``(N, 3, S, S)``, through
            the same cache, and its :class:`FeatureShape` is ``(3, S, S)``.
    """

    name: ClassVar[str]
    iterative: ClassVar[bool]
    first_round: ClassVar[int]
    exchanges: ClassVar[tuple[str, ...]]

    # -- client side -------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        """Learn from this client's training features ``(N, C, H, W)``."""
        ...

    def summarize(self, round_t: int) -> Summary:
        """The arrays that leave the site after ``fit`` in round ``round_t``."""
        ...

    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        """Anomaly maps ``(N, S, S)`` and image scores of ``features`` ``(N, C, H, W)``."""
        ...

    def state(self) -> dict[str, torch.Tensor]:
        """What this client needs besides the global summary to score and to go on to the
        next round (FedDyMem: its head and optimiser), as tensors; ``{}`` when nothing."""
        ...

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""
        ...

    # -- server side (pure) --------------------------------------------------------------------
    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        """The upload, checked (keys, shapes, dtypes, size bounds, finite values).

        Raises:
            BankError: naming ``who`` and what is wrong.
        """
        ...

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        """The global summary from the clients' validated summaries."""
        ...

    def descriptor(self, summary: Summary) -> np.ndarray:
        """One vector of the same length for every validated upload, what robust
        aggregation (:mod:`fedad.federation.robust`) compares across clients (e.g. the
        mean and spread of a bank's features)."""
        ...


@runtime_checkable
class TrainableDetector(Detector, Protocol):
    """A detector with a trainable module whose weights a weight exchange moves (FedAvg,
    FedProx, SCAFFOLD, FedBN, Local)."""

    def module(self) -> torch.nn.Module:
        """The trained network (its ``state_dict`` keys are what travel)."""
        ...

    def fit(self, features: torch.Tensor, global_summary: Summary | None, round_t: int,
            hooks: TrainHooks | None = None) -> FitInfo:
        """With ``global_summary=None`` after round 0 (a weight exchange): train the module
        on the site's features against what the site alone holds, each optimiser step
        through :func:`step` with ``hooks``; report the steps taken."""
        ...

    def own_summary(self, features: torch.Tensor) -> Summary:
        """What the site scores against when nothing but weights is shared, from its
        training ``features`` and the current module (FedDyMem: its own reduced bank;
        ``{}`` for a network that scores alone)."""
        ...


@runtime_checkable
class DifferentiableDetector(Detector, Protocol):
    """A detector that also scores with gradients (what a refinement that optimises the
    input image, such as F2PAD, needs; :mod:`fedad.evaluation.differentiable`)."""

    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`score` on features that carry gradients: torch operations only (no faiss,
        no ``no_grad``), equal to :meth:`score` within float32 rounding."""
        ...


class NoSummary:
    """The summary side of the contract for a network that scores alone (federated by
    its weights only): nothing to upload, check, merge or compare."""

    def summarize(self, round_t: int) -> Summary:
        return {}

    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        return {}

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        return {}

    def descriptor(self, summary: Summary) -> np.ndarray:
        return np.zeros(0)


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
