"""The exchange contract: what travels between a site and the server, and how the server
combines it (no Flower here). A run is a detector x an exchange (:mod:`fedad.detectors.registry`).

An exchange object lives on one side of one round:

An exchange states the detector capabilities it needs (``requires``,
:mod:`fedad.detectors.capabilities`); a detector that does not declare one of them is
refused when the config is composed, with a message naming the capability.

* **server** (built with the server's detector, fed no images): :meth:`Exchange.start`
  sets the first global state, :meth:`payload` says what a site receives (a personalised
  exchange may send every site its own), :meth:`validate` checks an upload of a round (raising
  :class:`~fedad.errors.BankError` naming the sender), :meth:`descriptor` is what robust
  aggregation compares, :meth:`aggregate` combines the valid uploads, :meth:`state` /
  :meth:`load_state` are what a checkpoint keeps of it;
* **site** (built with the site's detector): :meth:`fit` learns from the site's training
  features and the payload and returns the upload; :meth:`scoring_summary` is what the site
  scores against. What the exchange keeps at a site between rounds (SCAFFOLD's control
  variate) is the ``site_state`` dict it is handed, saved with the detector's state.

Uploads and payloads are :data:`~fedad.federation.records.Records`: record name -> arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedad.components.validate import require_keys
from fedad.config.schema import RunConfig
from fedad.detectors.base import Detector, FitInfo, Summary
from fedad.detectors.capabilities import Budgeted, Capability
from fedad.exchanges.records import Records


@dataclass
class Upload:
    """A valid upload: who sent it (``key`` as the transport knows the sender, its
    ``site`` number), its records and how many training images stand behind it."""

    key: int
    site: int
    records: Records
    num_examples: int


class Exchange:
    """Base of every exchange (override what differs)."""

    name: ClassVar[str]
    # the detector capabilities it needs (the pair check and its message come from these)
    requires: ClassVar[tuple[type[Capability], ...]] = ()
    # the site trains a module of its own and keeps it between rounds, and scores against
    # a summary of its own (weight exchanges); else it scores against the global summary
    site_model: ClassVar[bool] = False
    # record names a valid upload holds
    upload_records: ClassVar[tuple[str, ...]] = ()
    # its server step is a sum of per-site terms, so SecAgg+ can compute it
    # (``secure.enabled``; :meth:`sum_scales`, :meth:`sum_terms`, :meth:`aggregate_sums`)
    summable: ClassVar[bool] = False
    # a plug-in exchange's own config sections, name -> dataclass beside its code
    # (fedad.config.sections.section reads them)
    sections: ClassVar[dict[str, type]] = {}

    def __init__(self, cfg: RunConfig, detector: Detector) -> None:
        self.cfg = cfg
        self.detector = detector

    # -- config ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`~fedad.errors.ConfigError` when this exchange cannot run on the
        detector (called when a config is composed)."""

    def rounds(self) -> tuple[int, int]:
        """First and last round."""
        return 1, self.cfg.train.rounds

    def schedule(self) -> str:
        """The rounds in words (logs, summaries)."""
        cls = self.detector if isinstance(self.detector, type) else type(self.detector)
        if issubclass(cls, Budgeted):
            steps = ", ".join(f"{s.phase} {s.steps}" for s in cls.stages(self.cfg)
                              if s.steps)
            return (f"{self.cfg.train.rounds} rounds x {self.cfg.train.local_steps} steps "
                    f"(steps: {steps})")
        return f"{self.cfg.train.rounds} rounds x {self.cfg.train.local_epochs} epoch(s)"

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        """The first global state of a fresh run (a resumed one calls :meth:`load_state`)."""

    def payload(self, key: int, round_t: int) -> Records:
        """What site ``key`` receives to train in round ``round_t``."""
        return {}

    def evaluation_payload(self, key: int) -> Records:
        """What site ``key`` receives to be evaluated (after a round)."""
        return self.payload(key, -1)

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        """The upload of round ``round_t``, checked; raises
        :class:`~fedad.errors.BankError` naming ``who``."""
        require_keys(upload, self.upload_records, who)
        return upload

    def descriptor(self, upload: Records) -> np.ndarray:
        """One vector per valid upload, of equal length, for :mod:`fedad.federation.robust`."""
        return np.zeros(0)

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        """Combine the valid uploads of round ``round_t`` into the global state."""

    def sum_scales(self, round_t: int) -> dict[str, float]:
        """Both ends, ``secure.enabled``: the names of the round's sum terms (in the order
        they travel) and the public bound of each one's entries
        (:mod:`fedad.privacy.secure_sum`)."""
        raise NotImplementedError(f"exchange {self.name}: its server step is not a sum")

    def sum_terms(self, upload: Records, num_examples: int) -> dict[str, np.ndarray]:
        """Site, ``secure.enabled``: what this site adds to the sum, from its upload."""
        raise NotImplementedError(f"exchange {self.name}: its server step is not a sum")

    def aggregate_sums(self, sums: dict[str, np.ndarray], sites: int, round_t: int) -> None:
        """Server, ``secure.enabled``: the global state from the terms summed over the
        ``sites`` that stayed (the server sees no single upload)."""
        raise NotImplementedError(f"exchange {self.name}: its server step is not a sum")

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the server's global state."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`state`."""

    def global_summary(self) -> Summary | None:
        """The summary a finished run keeps in its folder (``None``: none is shared)."""
        return None

    # -- site ------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        """Learn from the site's training features; return the upload and what fit did."""
        raise NotImplementedError

    def scoring_summary(self, train_features: torch.Tensor, payload: Records) -> Summary:
        """What the site's detector scores against after the round."""
        raise NotImplementedError
