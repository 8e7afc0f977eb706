"""A site's whole scorer as one ``torch.nn.Module`` (no I/O, no faiss): normalisation, the
frozen backbone, the detector's torch scoring path
(:meth:`~fedad.detectors.capabilities.TorchScore.score_features`) against the global
summary, and the threshold. What :mod:`fedad.export.onnx_export` traces into an ONNX graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedad.detectors.base import Detector
from fedad.detectors.capabilities import TorchScore, require
from fedad.errors import ConfigError


def require_torch_score(detector: Detector) -> TorchScore:
    """``detector`` if it has a torch-only scoring path (what an exported graph runs).

    Raises:
        ConfigError: naming the detector, when it does not declare
            :class:`~fedad.detectors.capabilities.TorchScore`.
    """
    return require(detector, TorchScore, "an ONNX export (the graph runs the torch-only "
                   "score)")


class ScorerModule(nn.Module):
    """``images`` ``(N, 3, S, S)`` float32 in ``[0, 1]`` (RGB, already resized to ``S``) ->
    ``map`` ``(N, S, S)``, ``score`` ``(N,)`` and ``decision`` ``(N,)`` (bool,
    ``score > threshold``).

    The backbone's mean/std normalisation is inside (buffers), so a caller only resizes.
    Without a threshold (``None``: the site held out no normal image) the threshold is
    ``+inf`` and every decision is ``False``. The summary is held as numpy arrays the
    detector reads at every call, so a trace or export bakes them into the graph as
    constants. The network the score runs
    (:meth:`~fedad.detectors.capabilities.TorchScore.scoring_network`) is frozen in
    evaluation mode (its weights no longer train: build a fresh scorer to go on training).
    """

    def __init__(self, extractor: nn.Module, detector: Detector,
                 summary: Mapping[str, np.ndarray], image_size: int,
                 mean: Sequence[float], std: Sequence[float],
                 threshold: float | None) -> None:
        super().__init__()
        self.extractor = extractor.eval()
        self.detector = require_torch_score(detector)
        # the network the score runs (FedDyMem's head, an anomalib model) as a submodule:
        # its weights are the graph's parameters (a trace refuses weights that require
        # grad as constants), frozen
        self.network = self.detector.scoring_network()
        if self.network is not None:
            self.network.eval().requires_grad_(False)
        self.summary = {k: np.asarray(v) for k, v in summary.items()}
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)
                             .view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)
                             .view(1, 3, 1, 1))
        limit = math.inf if threshold is None else float(threshold)
        self.register_buffer("threshold", torch.tensor(limit, dtype=torch.float32))
        self.train(False)

    def train(self, mode: bool = True) -> ScorerModule:  # frozen: always evaluates
        return super().train(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's fused features of ``images`` in ``[0, 1]``."""
        x = (images - self.mean) / self.std
        return self.extractor(x)

    def forward(self, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (
                self.image_size, self.image_size):
            raise ConfigError(f"scorer input of shape {tuple(images.shape)}, expected "
                              f"(N, 3, {self.image_size}, {self.image_size})")
        scores = self.detector.score_features(self.features(images.float()), self.summary,
                                              self.image_size)
        maps = scores.maps.float()
        image = scores.image.float()
        return maps, image, image > self.threshold
