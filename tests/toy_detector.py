"""A detector written in a few lines, registered by a test to show that the registry alone
drives the bank strategy (tests/test_detectors.py)."""

from __future__ import annotations

import numpy as np

from fedad.components.validate import check_array, require_keys


class ToyMean:
    name = "toymean"
    iterative = False
    first_round = 1
    exchanges = ("summary",)

    def __init__(self, cfg, shape, device="cpu", seed=0):
        self.shape = shape

    def validate(self, summary, who):
        require_keys(summary, ("mean",), who)
        return {"mean": check_array(summary["mean"], who, "mean", shape=(self.shape.channels,))}

    def merge(self, summaries, round_t):
        return {"mean": np.mean([s["mean"] for s in summaries], axis=0).astype(np.float32)}

    def descriptor(self, summary):
        return np.asarray(summary["mean"], dtype=np.float64)
