"""What a detector can offer beyond the contract every detector keeps
(:class:`~fedad.detectors.base.Detector`): one abstract class per capability. A detector
*declares* a capability by inheriting it; an exchange (``requires``) or a refinement states
the capabilities it needs, and the pair check, its error message and the docs' table come
from those declarations (:func:`missing`, :func:`describe`). Nothing probes a detector
for a method by name.

==============================  =========================================================
capability                      what the detector offers
==============================  =========================================================
:class:`Summarizes`             a summary that travels (summarize / validate / merge)
:class:`SecureSums`             ... whose merge is a sum of per-site terms (SecAgg+)
:class:`PrivateRelease`         ... released with differential privacy (clipped rows)
:class:`StreamedFit`            ... fitted from features read chunk by chunk (streaming)
:class:`Trainable`              a trained module, its named parts and their optimisers
:class:`Phased`                 ... trained part by part, one phase per round
:class:`HeldOutLoss`            ... its objective measured on held-out normals (diffad)
:class:`Budgeted`               ... for a step budget per phase, with an lr schedule
:class:`Represents`             ... with a representation part (FedPHP, DBE)
:class:`ShiftedRepresentation`  ... plus a per-site bias of that representation (DBE)
:class:`RowMatrix`              ... with a matrix personalised row by row (RowFed)
:class:`TorchScore`             a score in torch operations only (ONNX export)
:class:`Differentiable`         ... with gradients to the features (F2PAD)
:class:`NearestBank`            a score by the nearest row of a bank (F2PAD's Eq. 5)
:class:`PositionalGaussian`     a score by one Gaussian per position (F2PAD's Eq. 7)
:class:`Reconstructs`           an anomaly-free reconstruction of an image (diffad)
==============================  =========================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from fedad.components.budget import RoundPlan, Scheduled, Stage, mean_factor, plan
from fedad.components.training import OptimSpec, Part, TrainHooks
from fedad.detectors.base import Detector, FitInfo, Scores, Summary
from fedad.errors import ConfigError
from fedad.features.stream import FeatureFile

if TYPE_CHECKING:  # annotations only
    from fedad.config.schema import RunConfig, SecureConfig


class Capability(ABC):  # noqa: B024 - a marker; each capability declares its methods
    """Base of every capability; ``what`` says it in a few words (errors, docs)."""

    what: ClassVar[str] = ""


def capabilities(cls: type) -> list[type[Capability]]:
    """The capabilities ``cls`` declares (most specific first, as its MRO lists them)."""
    return [c for c in cls.__mro__ if isinstance(c, type) and issubclass(c, Capability)
            and c is not Capability and not issubclass(c, Detector)]


def missing(cls: type, required: Sequence[type[Capability]]) -> list[type[Capability]]:
    """Those of ``required`` that ``cls`` does not declare."""
    return [c for c in required if not issubclass(cls, c)]


def describe(capability: type[Capability]) -> str:
    """``Name (what it offers)``, as error messages and docs say it."""
    return f"{capability.__name__} ({capability.what})"


# -- families --------------------------------------------------------------------------------


class Family(Capability):
    """The detector's name stands for a family of registered detectors, and the run's
    config chooses the member (``detector=anomalib``: one per anomalib model, named by
    ``sections.anomalib.model``); composing a run replaces the name by the member's."""

    what = "a family of detectors, the member chosen by the run's config"

    @classmethod
    @abstractmethod
    def member(cls, cfg: RunConfig) -> str:
        """The registered name of the detector ``cfg`` chooses.

        Raises:
            ConfigError: a choice that is not a member (naming those that are).
        """


# -- summaries -------------------------------------------------------------------------------


class Summarizes(Capability):
    """The detector summarises what it learnt into arrays that leave the site (a memory
    bank, a coreset, Gaussian statistics; never images or weights); the server checks and
    merges them. ``validate`` / ``merge`` / ``descriptor`` are pure (the detector's config
    and feature geometry only), so the server builds the same class with no features."""

    what = "a summary that travels: summarize, validate, merge, descriptor"

    @abstractmethod
    def summarize(self, round_t: int) -> Summary:
        """The arrays that leave the site after ``fit`` in round ``round_t``."""

    @abstractmethod
    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        """The upload, checked (keys, shapes, dtypes, size bounds, finite values).

        Raises:
            BankError: naming ``who`` and what is wrong.
        """

    @abstractmethod
    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        """The global summary from the clients' validated summaries."""

    @abstractmethod
    def descriptor(self, summary: Summary) -> np.ndarray:
        """One vector of the same length for every validated upload, what robust
        aggregation compares across clients."""


class SecureSums(Summarizes):
    """The global summary is a function of per-site sums (PaDiM's counts, means and
    scatters), so Flower's SecAgg+ can compute it without the server seeing an upload."""

    what = "a summary merged from sums of per-site terms (secure aggregation)"

    @staticmethod
    @abstractmethod
    def sum_scales(secure: SecureConfig) -> dict[str, float]:
        """The sum terms' names (in the order they travel) and each one's public bound."""

    @abstractmethod
    def sum_terms(self, summary: Summary) -> dict[str, np.ndarray]:
        """What this site adds to the sum, from its summary."""

    @abstractmethod
    def from_sums(self, sums: Mapping[str, np.ndarray]) -> Summary:
        """The global summary from the summed terms."""


class PrivateRelease(Summarizes):
    """The summary can be released with differential privacy (``privacy.epsilon > 0``):
    each image's rows are clipped and Gaussian noise added (:mod:`fedad.privacy`)."""

    what = "a summary released with differential privacy"

    @classmethod
    @abstractmethod
    def private_releases(cls, cfg: RunConfig) -> int:
        """Gaussian mechanisms one site's run releases (what the accountant composes).

        Raises:
            ConfigError: a configuration whose summary cannot be released privately.
        """

    @abstractmethod
    def private_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, P, d)``: the rows the private release clips, image by image."""


class StreamedFit(Summarizes):
    """The detector fits from a site's training features read a chunk of images at a time
    (``backbone.stream=true``: a :class:`~fedad.features.stream.FeatureFile`), so the site's
    memory does not grow with its images beyond the summary itself."""

    what = "a fit from features read chunk by chunk (backbone.stream)"

    @abstractmethod
    def fit_stream(self, features: FeatureFile, global_summary: Summary | None,
                   round_t: int) -> FitInfo:
        """What :meth:`~fedad.detectors.base.Detector.fit` learns, from
        ``features.chunks(cfg.backbone.stream_chunk)``."""


# -- trained modules -------------------------------------------------------------------------


class Trainable(Capability):
    """The detector trains a module whose weights a weight exchange moves (local, FedAvg,
    FedProx, SCAFFOLD, FedBN, ...). The module has named parts (state-dict key prefixes),
    each trained by its own optimiser (:meth:`parts`); every optimiser step goes through
    :func:`~fedad.components.training.step` with the exchange's hooks, and every optimiser
    is built from :func:`~fedad.components.training.resolved_spec` (the exchange may
    replace it: SCAFFOLD's plain SGD)."""

    what = "a trained module whose weights travel, with named parts and their optimisers"

    # a weight-exchange run's name in tables: <weights_label>+<exchange> (FedDyMem: its head)
    weights_label: ClassVar[str] = ""
    # what to change for FedBN when the module has no BatchNorm layer
    batch_norm_hint: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def parts(cls, cfg: RunConfig) -> dict[str, Part]:
        """The module's parts by name, each a state-dict key prefix and its optimiser
        (from the detector's own config)."""

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The trained network (its ``state_dict`` keys are what travel)."""

    @abstractmethod
    def fit(self, features: torch.Tensor, global_summary: Summary | None, round_t: int,
            hooks: TrainHooks | None = None) -> FitInfo:
        """With ``global_summary=None`` (a weight exchange): train the module on the
        site's features, every step through :func:`~fedad.components.training.step` with
        ``hooks``; report the steps taken."""

    @abstractmethod
    def own_summary(self, features: torch.Tensor) -> Summary:
        """What the site scores against when nothing but weights is shared (FedDyMem: its
        own reduced bank; ``{}`` for a network that scores alone)."""

    def trained_parts(self, round_t: int) -> tuple[str, ...]:
        """The parts round ``round_t`` trains (every one; :class:`Phased` narrows it):
        a site uploads only their weights."""
        return tuple(self.parts(self.cfg))

    def optim_spec(self, part: str, hooks: TrainHooks | None) -> OptimSpec:
        """The optimiser ``part`` trains with under the exchange's ``hooks``."""
        from fedad.components.training import resolved_spec

        return resolved_spec(hooks, part, self.parts(self.cfg)[part].optim)


class HeldOutLoss(Trainable):
    """The training objective can be measured on normal images the site did not train on
    (a generative model's denoising loss): what a choice is made on where the validation
    split's synthetic defects do not separate the candidates. The site reports it as
    ``val_loss`` beside the validation AUROCs."""

    what = "the training objective on held-out normal images (held_out_loss)"

    @abstractmethod
    def held_out_loss(self, features: torch.Tensor) -> float:
        """The objective on these normal images under the weights the detector scores
        with, at draws fixed by the config (the same images give the same number)."""


class Phased(Trainable):
    """Rounds train the module part by part: each round belongs to one phase, and a phase
    trains the parts named like it (asymst: its DDPM, then its student, then its head)."""

    what = "a module trained part by part, one phase per round"

    @classmethod
    @abstractmethod
    def phases(cls, cfg: RunConfig) -> list[str]:
        """The phase (a part's name) of every round ``1..train.rounds``."""

    def trained_parts(self, round_t: int) -> tuple[str, ...]:
        kinds = self.phases(self.cfg)
        return (kinds[round_t - 1],) if 1 <= round_t <= len(kinds) else tuple(
            self.parts(self.cfg))


class Budgeted(Phased):
    """The training is a budget of optimiser steps per phase (:meth:`stages`), spent
    ``train.local_steps`` a round (:func:`~fedad.components.budget.plan`) with the learning
    rate scheduled over each phase's steps (``train.schedule``, ``train.warmup``): a
    federated run takes the steps a centralized one takes, in the same rounds. Every
    value the run leaves unset (0) is filled from the preset named by ``budget``
    (:meth:`presets`) when the config is resolved."""

    what = "training measured in optimiser steps per phase, with a learning-rate schedule"

    @classmethod
    @abstractmethod
    def stages(cls, cfg: RunConfig) -> list[Stage]:
        """The phases in order and their optimiser steps (from the resolved config)."""

    @classmethod
    @abstractmethod
    def presets(cls) -> dict[str, dict[str, object]]:
        """Budget name (``cpu``, ``paper``) -> dotted config keys and their values, each
        filling a field the run left unset."""

    @classmethod
    def plan(cls, cfg: RunConfig) -> list[RoundPlan]:
        """What every round ``1..train.rounds`` trains."""
        return plan(cls.stages(cfg), int(cfg.train.local_steps))

    @classmethod
    def phases(cls, cfg: RunConfig) -> list[str]:
        return [r.phase for r in cls.plan(cfg)]

    def round_plan(self, round_t: int) -> RoundPlan:
        """Round ``round_t``'s phase and steps.

        Raises:
            ConfigError: a round outside the budget's.
        """
        rounds = self.plan(self.cfg)
        if not 1 <= round_t <= len(rounds):
            raise ConfigError(f"{type(self).name}: round {round_t} is outside the budget's "
                              f"1..{len(rounds)}")
        return rounds[round_t - 1]

    def scheduled(self, optimizer: torch.optim.Optimizer, spec: OptimSpec,
                  rp: RoundPlan) -> Scheduled:
        """``optimizer`` (built from ``spec``) with its rate on the run's schedule over
        ``rp``'s phase (call ``.at(rp.first + i)`` before step ``i`` of the round)."""
        t = self.cfg.train
        return Scheduled(optimizer, spec.lr, rp.total, float(t.warmup), t.schedule)

    def lr_scale(self, round_t: int) -> float:
        """The mean of the schedule's multipliers over round ``round_t``'s steps (what
        SCAFFOLD's ``K * eta_l`` becomes under a schedule)."""
        t = self.cfg.train
        return mean_factor(self.round_plan(round_t), float(t.warmup), t.schedule)


class Represents(Trainable):
    """The module has a representation part: the submodule whose output is the site's
    representation (FedDyMem's projection), what FedPHP's MMD and DBE's mean compare."""

    what = "a representation part of the trained module"

    @abstractmethod
    def representation(self) -> torch.nn.Module:
        """The submodule whose output ``(B, C, ...)`` is the representation."""


class ShiftedRepresentation(Represents):
    """The module adds a per-site bias ``(C,)`` to its representation (DBE's PRBM): a
    buffer that never travels."""

    what = "a per-site bias added to the representation"

    @abstractmethod
    def representation_shift(self) -> torch.Tensor:
        """The bias ``(C,)`` (a buffer of the module)."""

    @abstractmethod
    def set_representation_shift(self, shift: torch.Tensor) -> None:
        """Use ``shift`` (a leaf the loss may differentiate) as the bias."""

    @classmethod
    @abstractmethod
    def shift_key(cls) -> str:
        """The bias's state-dict key (kept at the site, never uploaded)."""


class RowMatrix(Trainable):
    """The module holds a matrix whose rows are its input channels (FedDyMem's projection),
    what RowFed personalises row by row."""

    what = "a matrix of the module personalised row by row"

    @classmethod
    @abstractmethod
    def row_matrix(cls, cfg: RunConfig) -> str:
        """The matrix's state-dict key, ``(C_out, C_in[, 1, 1])``."""


# -- scores in torch, with gradients --------------------------------------------------------


class TorchScore(Capability):
    """The detector also scores one batch in torch operations only (no faiss, no numpy), the
    graph that ``fedad-export`` traces into ONNX."""

    what = "a score in torch operations only (score_features)"

    @abstractmethod
    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`~fedad.detectors.base.Detector.score` in torch operations only, equal to
        ``score`` within float32 rounding (with :class:`Differentiable`, gradients reach
        ``features``)."""

    def scoring_network(self) -> torch.nn.Module | None:
        """The network :meth:`score_features` runs, if any: an export holds it as a
        submodule, so its weights are the graph's parameters (frozen). By default a
        trained detector's :meth:`~Trainable.module`, else none."""
        return self.module() if isinstance(self, Trainable) else None


class Differentiable(TorchScore):
    """... whose :meth:`~TorchScore.score_features` carries gradients to its input features
    (what a refinement that optimises the image, such as F2PAD, needs)."""

    what = "a score with gradients to the features (score_features)"


class NearestBank(Differentiable):
    """The patch score is the distance to the nearest row of a bank the summary holds
    (PatchCore): a refinement may restrict the search to a few candidates (F2PAD Eq. 5)."""

    what = "a score by the nearest row of a bank"

    @abstractmethod
    def bank_rows(self, summary: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The bank ``(M, C)`` of ``summary`` (float32)."""


class PositionalGaussian(Differentiable):
    """The patch score is the Mahalanobis distance to one Gaussian per feature position over
    a channel subset (PaDiM): a refinement may sum it over a region (F2PAD Eq. 7)."""

    what = "a score by one Gaussian per feature position"

    @abstractmethod
    def gaussians(self, summary: Mapping[str, np.ndarray]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(P, d)`` and inverse covariance ``(P, d, d)`` of every position."""

    @abstractmethod
    def channel_subset(self) -> np.ndarray:
        """The ``d`` feature channels the Gaussians are over."""


class Reconstructs(Capability):
    """The detector reconstructs an anomaly-free image (diffad's gradient denoising)."""

    what = "an anomaly-free reconstruction of an image"

    @abstractmethod
    def units(self):
        """The conversion between the backbone's normalisation and ``[-1, 1]``
        (:class:`~fedad.features.levels.Levels`) the reconstruction works in."""

    @abstractmethod
    def reconstruct(self, images: torch.Tensor,
                    objective: Callable[[torch.Tensor], torch.Tensor],
                    desc: str | None = None) -> torch.Tensor:
        """The reconstructions of normalised ``images`` descending on ``objective``."""



def require(detector: Detector, capability: type[Capability], needed_by: str):
    """``detector`` when it declares ``capability``.

    Raises:
        ConfigError: naming the detector, the capability and what needs it.
    """
    if not isinstance(detector, capability):
        raise ConfigError(f"{needed_by} requires {describe(capability)}, which detector="
                          f"{type(detector).name} does not declare")
    return detector
