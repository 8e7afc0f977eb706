"""What a client of a weight-exchanging baseline computes in a round, with no Flower.

Every method trains the same head as FedDyMem (projection + memory generator) with the
metric loss (Eq. 12) against the client's *own* reduced bank, which stays local and is
rebuilt (memory-reduce, Alg. 2) from the model each round. What differs is what travels:

- ``local``: nothing; each client trains and scores alone.
- ``fedavg``: all weights and BatchNorm statistics; Flower's FedAvg averages them.
- ``fedprox``: as FedAvg, plus ``(mu/2)||w - w_global||^2`` in the client loss.
- ``scaffold``: weights plus control variates (option II); gradients are corrected by
  ``c - c_i`` at every step; plain SGD, as the option II update assumes.
- ``fedbn``: as FedAvg, but BatchNorm weights, biases and statistics never leave the client.

BatchNorm's ``num_batches_tracked`` counters are never exchanged (local bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedad.baselines.fedbn import batchnorm_keys
from fedad.baselines.fedprox import proximal_term
from fedad.baselines.scaffold import client_control_update, correct_gradients, zeros_like_state
from fedad.config import RunConfig
from fedad.detectors.base import Scores
from fedad.detectors.feddymem.client import FedDyMemClient
from fedad.detectors.registry import WEIGHT_METHODS
from fedad.errors import ConfigError

METHODS = WEIGHT_METHODS


@dataclass
class RoundResult:
    """What a training round sends back: ``weights`` (None for Local), SCAFFOLD's
    ``delta_c``, the epoch losses and the number of optimiser steps."""

    weights: dict[str, torch.Tensor] | None
    delta_c: dict[str, torch.Tensor] | None
    losses: list[float]
    steps: int


def exchanged_keys(head: torch.nn.Module, method: str) -> list[str]:
    """State-dict keys a method sends (and receives)."""
    keys = [k for k in head.state_dict() if not k.endswith("num_batches_tracked")]
    if method == "fedbn":
        local = batchnorm_keys(head)
        if not local:  # FedBN without BatchNorm would be FedAvg under another name
            raise ConfigError(f"fedbn keeps BatchNorm layers local, but the "
                              f"{type(head).__name__} has none (head.batch_norm=true adds "
                              "BatchNorm to FedDyMem's projection)")
        keys = [k for k in keys if k not in local]
    return keys


def initial_weights(channels: int, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The server's starting point: a head drawn with ``train.seed``."""
    client = WeightClient(channels, cfg, seed=cfg.train.seed)
    return client.weights()


class WeightClient:
    """One client of a weight-exchanging method: head, optimiser, local bank, and for
    SCAFFOLD its control variate."""

    def __init__(self, channels: int, cfg: RunConfig, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        if cfg.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
        self.method = cfg.method
        train = replace(cfg.train, optimizer="sgd") if cfg.method == "scaffold" else cfg.train
        self.cfg = replace(cfg, train=train)
        self.model = FedDyMemClient(channels, cfg.head, train, device, seed=seed)
        self.keys = exchanged_keys(self.model.head, self.method)
        self.bank: torch.Tensor | None = None
        self.round_t = 0
        params = dict(self.model.head.named_parameters())
        self.c_local = zeros_like_state({k: v.detach() for k, v in params.items()})

    # -- weights ---------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        state = self.model.head.state_dict()
        return {k: state[k].detach().cpu().clone() for k in self.keys}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take the global weights for the exchanged keys (FedBN keeps its BatchNorm)."""
        missing = [k for k in self.keys if k not in weights]
        if missing:
            raise ConfigError(f"global weights lack {missing[:3]} ({len(missing)} keys)")
        state = self.model.head.state_dict()
        for k in self.keys:
            state[k] = weights[k].to(state[k].dtype).reshape(state[k].shape)
        self.model.head.load_state_dict(state)

    # -- a round ---------------------------------------------------------------------------
    def rebuild_bank(self, features: torch.Tensor) -> torch.Tensor:
        """Memory-reduce (Alg. 2) of the local training memories with the current model."""
        self.bank = self.model.reduce(features, self.bank, self.round_t)
        return self.bank

    def train_round(self, features: torch.Tensor, global_weights: dict | None = None,
                    c_global: dict | None = None) -> RoundResult:
        """Load the global model, rebuild the local bank, E epochs of the metric loss."""
        if global_weights is not None:
            self.load_weights(global_weights)
        self.rebuild_bank(features)
        extra = after = None
        if self.method == "fedprox":
            anchor = {k: v.detach().clone() for k, v in self.model.head.named_parameters()}
            mu = self.cfg.train.proximal_mu

            def extra(head: torch.nn.Module) -> torch.Tensor:
                return proximal_term(head.named_parameters(), anchor, mu)
        x_global = None
        if self.method == "scaffold":
            if c_global is None:
                raise ConfigError("scaffold: the server sent no control variate")
            x_global = {k: v.detach().clone() for k, v in self.model.head.named_parameters()}
            c_local, c_glob = self.c_local, c_global

            def after(head: torch.nn.Module) -> None:
                correct_gradients(head.named_parameters(), c_local, c_glob)
        losses = self.model.train_epochs(features, self.bank, extra_loss=extra,
                                         after_backward=after)
        steps = self.model.last_steps
        delta_c = None
        if self.method == "scaffold":
            if steps > 0:
                y = {k: v.detach().clone() for k, v in self.model.head.named_parameters()}
                self.c_local, delta_c, _ = client_control_update(
                    self.c_local, c_global, x_global, y, steps, self.cfg.train.lr)
            else:  # no step taken (e.g. a one-image client with BatchNorm): c_i unchanged
                delta_c = zeros_like_state(self.c_local)
        self.round_t += 1
        weights = None if self.method == "local" else self.weights()
        return RoundResult(weights=weights, delta_c=delta_c, losses=losses, steps=steps)

    def score(self, train_features: torch.Tensor, test_features: torch.Tensor,
              image_size: int, global_weights: dict | None = None) -> Scores:
        """Score the test set with the (global) model and the client's own bank, rebuilt
        from that model."""
        if global_weights is not None:
            self.load_weights(global_weights)
        bank = self.model.reduce(train_features, self.bank, self.round_t)
        return self.model.score(test_features, bank, image_size, self.cfg.score)

    # -- state kept between rounds -----------------------------------------------------------
    def to_arrays(self) -> dict[str, torch.Tensor]:
        out = self.model.to_arrays()
        out["round"] = torch.tensor(self.round_t)
        if self.bank is not None:
            out["bank"] = self.bank.clone()
        out.update({f"cv.{k}": v.clone() for k, v in self.c_local.items()})
        return out

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        self.model.load_arrays({k: v for k, v in arrays.items()
                                if k.startswith(("head.", "optim.")) or k == "shuffle"})
        self.round_t = int(arrays.get("round", torch.tensor(0)))
        self.bank = arrays.get("bank")
        self.c_local = {k[3:]: v for k, v in arrays.items() if k.startswith("cv.")} or \
            self.c_local
