"""A toy trained detector: a small convolutional autoencoder on the frozen features. The
anomaly map is the squared reconstruction error per feature position; nothing but the
autoencoder's weights can travel (weight exchanges), and it scores alone (no summary).

It declares what the personalised exchanges ask for: its code is a representation with a
per-site bias (FedPHP, DBE) and the encoder's 1x1 convolution a row matrix (RowFed). Its
settings are its own section (``sections.toyae``, :class:`ToyAEConfig`)."""

from __future__ import annotations

import torch
from torch import nn

from fedad.components.maps import anomaly_maps, image_scores
from fedad.components.optimizer_state import load_optimizer_arrays, optimizer_arrays
from fedad.components.training import OptimSpec, Part, TrainHooks, build_optimizer, step
from fedad.config.sections import section
from fedad.detectors.base import Detector, FitInfo, Scores
from fedad.detectors.capabilities import RowMatrix, ShiftedRepresentation
from fedad.errors import ConfigError
from tests.toy_trainable.config import ToyAEConfig

SECTION = "toyae"


class AutoEncoder(nn.Module):
    def __init__(self, channels: int, hidden: int = 8) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, hidden, 1)  # the representation
        self.register_buffer("shift", torch.zeros(hidden))  # DBE's per-site bias
        self.decode = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.project(x) + self.shift[None, :, None, None]
        return self.decode(torch.relu(code))


class ToyAE(Detector, ShiftedRepresentation, RowMatrix):
    name = "toyae"
    iterative = True
    sections = {SECTION: ToyAEConfig}

    @classmethod
    def check_config(cls, cfg):
        own = section(cfg, SECTION, ToyAEConfig)
        if own.hidden < 1 or own.lr <= 0:
            raise ConfigError(f"sections.toyae: hidden={own.hidden} must be >= 1 and "
                              f"lr={own.lr} > 0")

    @classmethod
    def parts(cls, cfg):
        return {"net": Part("", OptimSpec("adam", section(cfg, SECTION, ToyAEConfig).lr))}

    @classmethod
    def row_matrix(cls, cfg):
        return "project.weight"

    @classmethod
    def shift_key(cls):
        return "shift"

    def __init__(self, cfg, shape, device="cpu", seed=0):
        self.cfg, self.shape = cfg, shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = AutoEncoder(shape.channels, section(cfg, SECTION, ToyAEConfig).hidden)
        self.spec = self.parts(cfg)["net"].optim
        self.optimizer = build_optimizer(self.net.parameters(), self.spec)

    def module(self) -> nn.Module:
        return self.net

    def representation(self) -> nn.Module:
        return self.net.project

    def representation_shift(self) -> torch.Tensor:
        return self.net.shift

    def set_representation_shift(self, shift: torch.Tensor) -> None:
        self.net.shift = shift

    def fit(self, features, global_summary, round_t, hooks: TrainHooks | None = None):
        spec = self.optim_spec("net", hooks)  # the exchange's rule (SCAFFOLD: plain SGD)
        if spec != self.spec:
            self.spec, self.optimizer = spec, build_optimizer(self.net.parameters(), spec)
        self.net.train()
        steps, loss = 0, torch.zeros(())
        for _ in range(self.cfg.train.local_epochs):
            for start in range(0, len(features), self.cfg.train.batch_size):
                x = features[start:start + self.cfg.train.batch_size].float()
                loss = (self.net(x) - x).pow(2).mean()
                step(self.net, self.optimizer, loss, hooks)
                steps += 1
        return FitInfo(float(loss.detach()), steps=steps)

    def own_summary(self, features):
        return {}

    @torch.no_grad()
    def score(self, features, global_summary, image_size):
        self.net.eval()
        x = features.float()
        patch = (self.net(x) - x).pow(2).mean(dim=1)
        maps = anomaly_maps(patch, image_size, self.cfg.score.sigma)
        return Scores(maps=maps, image=image_scores(maps))

    def state(self):  # weights and the optimiser's moments: a resumed run steps the same
        return {**{f"net.{k}": v.clone() for k, v in self.net.state_dict().items()},
                **optimizer_arrays(self.optimizer)}

    def load_state(self, arrays):
        if arrays:
            self.net.load_state_dict({k[4:]: v for k, v in arrays.items()
                                      if k.startswith("net.")})
            load_optimizer_arrays(self.optimizer, arrays)

