"""A toy personalised exchange: the server keeps every site's last upload and sends each
site its own mix, half its own weights and half the mean of all (the first round: the
common starting weights). Sites therefore end with different models."""

from __future__ import annotations

import numpy as np

from fedad.exchanges.weights import WEIGHTS, WeightExchange


class ToyPersonal(WeightExchange):
    name = "toypersonal"

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.own: dict[int, dict[str, np.ndarray]] = {}

    def payload(self, key, round_t):
        if key not in self.own:
            return {WEIGHTS: self.weights}
        own = {**self.weights, **self.own[key]}  # a key it never uploaded: the global
        return {WEIGHTS: {k: (0.5 * own[k] + 0.5 * self.weights[k]).astype(
            self.weights[k].dtype) for k in self.weights}}

    def evaluation_payload(self, key):
        return self.payload(key, -1)

    def aggregate(self, uploads, round_t):
        super().aggregate(uploads, round_t)
        for u in uploads:  # a module trained part by part uploads the round's part
            self.own.setdefault(u.key, {}).update(u.records[WEIGHTS])

    def state(self):
        return {**super().state(), "own": self.own}

    def load_state(self, state):
        super().load_state(state)
        self.own = dict(state["own"])
