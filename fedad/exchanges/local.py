"""Local training: nothing leaves a site. Each site trains its detector's module alone and
scores against its own summary; the server only schedules rounds and collects metrics (the
lower reference of every federated comparison)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedad.detectors.base import FitInfo
from fedad.exchanges.base import Upload
from fedad.exchanges.records import Records
from fedad.exchanges.weights import WeightExchange


class LocalExchange(WeightExchange):
    name = "local"
    upload_records = ()

    def start(self) -> None:  # no global model
        self.weights, self.reference = {}, {}

    def payload(self, key: int, round_t: int) -> Records:
        return {}

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        return {}  # nothing is expected, anything sent is ignored

    def descriptor(self, upload: Records) -> np.ndarray:
        return np.zeros(0)  # nothing uploaded: nothing to compare

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        pass

    def upload(self, site_state: dict[str, torch.Tensor], payload: Records,
               info: FitInfo) -> Records:
        return {}
