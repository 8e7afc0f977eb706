"""A detector written in a few lines, registered by a test to show that the registry alone
drives the bank strategy (tests/test_detectors.py)."""

from __future__ import annotations

import numpy as np
import torch

from fedad.components.maps import anomaly_maps, image_scores
from fedad.components.validate import check_array, require_keys
from fedad.detectors.base import Detector, FitInfo, Scores
from fedad.detectors.capabilities import Summarizes


class ToyMean(Detector, Summarizes):
    """The mean feature of a site; a position's score is its distance to the global mean."""

    name = "toymean"
    iterative = False

    def __init__(self, cfg, shape, device="cpu", seed=0):
        self.cfg, self.shape = cfg, shape
        self.mean = np.zeros(shape.channels, np.float32)

    def fit(self, features, global_summary, round_t):
        self.mean = features.float().mean(dim=(0, 2, 3)).numpy()
        return FitInfo()

    def summarize(self, round_t):
        return {"mean": self.mean}

    def score(self, features, global_summary, image_size):
        mean = torch.from_numpy(np.asarray(global_summary["mean"]))[None, :, None, None]
        maps = anomaly_maps((features.float() - mean).pow(2).sum(1), image_size, 4.0)
        return Scores(maps=maps, image=image_scores(maps))

    def state(self):
        return {}

    def load_state(self, arrays):
        pass

    def validate(self, summary, who):
        require_keys(summary, ("mean",), who)
        return {"mean": check_array(summary["mean"], who, "mean", shape=(self.shape.channels,))}

    def merge(self, summaries, round_t):
        return {"mean": np.mean([s["mean"] for s in summaries], axis=0).astype(np.float32)}

    def descriptor(self, summary):
        return np.asarray(summary["mean"], dtype=np.float64)
