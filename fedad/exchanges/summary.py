"""The summary exchange: each site uploads what its detector summarises (FedDyMem's memory
bank, PatchCore's coreset, PaDiM's Gaussian statistics; never images or weights), the
server checks every upload with the detector's ``validate`` and combines the valid ones with
its ``merge`` (FedDyMem: K-means, Alg. 3), and every site scores against that one global
summary. A detector of frozen features (``iterative = False``) needs one round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedad.detectors.base import FitInfo, Summary
from fedad.detectors.capabilities import SecureSums, StreamedFit, Summarizes, require
from fedad.errors import BankError
from fedad.exchanges.base import Exchange, Upload
from fedad.exchanges.records import Records
from fedad.features.stream import FeatureFile

SUMMARY = "summary"  # the record that carries a summary, both ways


class SummaryExchange(Exchange):
    name = "summary"
    requires = (Summarizes,)
    upload_records = (SUMMARY,)

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.summary: Summary | None = None

    def rounds(self) -> tuple[int, int]:
        d = self.detector
        return d.first_round, (self.cfg.train.rounds if d.iterative else 1)

    def schedule(self) -> str:
        if not self.detector.iterative:
            return "1 round (frozen features)"
        return super().schedule()

    # -- server ----------------------------------------------------------------------------
    def payload(self, key: int, round_t: int) -> Records:
        return {} if self.summary is None else {SUMMARY: self.summary}

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        super().validate(upload, who, round_t)
        return {SUMMARY: self.detector.validate(upload[SUMMARY], who)}

    def descriptor(self, upload: Records) -> np.ndarray:
        return self.detector.descriptor(upload[SUMMARY])

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        self.summary = self.detector.merge([u.records[SUMMARY] for u in uploads], round_t)

    @property
    def summable(self) -> bool:  # type: ignore[override]
        """The detector's statistics add up (PaDiM: :class:`SecureSums`)."""
        return isinstance(self.detector, SecureSums)

    def sum_scales(self, round_t: int) -> dict[str, float]:
        return self.detector.sum_scales(self.cfg.secure)

    def sum_terms(self, upload: Records, num_examples: int) -> dict[str, np.ndarray]:
        return self.detector.sum_terms(upload[SUMMARY])

    def aggregate_sums(self, sums: dict[str, np.ndarray], sites: int, round_t: int) -> None:
        self.summary = self.detector.from_sums(sums)

    def state(self) -> dict[str, Any]:
        return {SUMMARY: self.summary}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.summary = state[SUMMARY]

    def global_summary(self) -> Summary | None:
        return self.summary

    # -- site ------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor | FeatureFile, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        if isinstance(features, FeatureFile):  # backbone.stream: checked when composed
            detector = require(self.detector, StreamedFit, "backbone.stream=true")
            info = detector.fit_stream(features, payload.get(SUMMARY), round_t)
        else:
            info = self.detector.fit(features, payload.get(SUMMARY), round_t)
        return {SUMMARY: self.detector.summarize(round_t)}, info

    def scoring_summary(self, train_features: torch.Tensor, payload: Records) -> Summary:
        if SUMMARY not in payload:
            raise BankError("summary exchange: the server sent no global summary to score "
                            "with")
        return payload[SUMMARY]
