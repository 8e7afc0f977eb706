"""APPLE (Luo and Wu, IJCAI 2022, "Adapt to Adaptation: Learning Personalization for
Cross-Silo Federated Learning"; ``APPLEConfig``, read from PFLlib's ``clientapple``).

Every site ``i`` of the ``M`` has a core model ``core_i``; the server averages nothing, it
keeps every site's last core and sends all ``M`` to every site (so a round downloads ``M``
models). Site ``i``'s personalised model is ``sum_j p_ij core_j`` (its parameters; buffers
such as BatchNorm statistics are the site's own), ``p_i`` its directed relationship
vector (``1 / M`` at first, kept at the site). In every training step, after the backward
of the detector's loss at the personalised model (gradient ``g``):

* ``core_i <- core_i - lr M p_ii g`` (``lr = train.lr``, scaled by ``M`` as PFLlib does);
* ``p_ij <- p_ij - dr_lr (mean_k mean(g_k * core_j,k) + lam_t mu (p_ij - p0_j))`` for every
  ``j`` (the mean over parameter tensors ``k``), ``p0`` the sites' shares of the training
  images (uniform until the server has seen them all);
* the personalised model is mixed again from the cores (the optimiser's own step is
  overwritten).

``lam_t = (cos((t - 1) pi / L) + 1) / 2`` for ``t - 1 < L``, else 0, ``L = apple.decay * T``
(PFLlib's schedule, rounds counted from 1). A site uploads its core (with its buffers) and
scores with its personalised model. A site absent from a round keeps its core at the server
and its ``p`` at home.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedad.components.training import TrainHooks
from fedad.detectors.base import FitInfo
from fedad.detectors.capabilities import Phased
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.exchanges.records import Arrays, Records
from fedad.exchanges.slots import slot_of
from fedad.exchanges.weights import WEIGHTS, WeightExchange

CORES = "apple.cores"  # every site's core: "<slot>.<key>" -> array
META = "apple"  # the receiving site's slot and p0
P = "apple.p"  # site state: the directed relationship vector


def lam_at(round_t: int, rounds: int, decay: float) -> float:
    """APPLE's ``lam_t``: a cosine from 1 (round 1) to 0 over the first ``decay`` of the
    rounds, 0 after."""
    span = max(int(decay * rounds), 1)
    t = round_t - 1
    return (math.cos(t * math.pi / span) + 1) / 2 if t < span else 0.0


def mixed(cores: Sequence[Mapping[str, torch.Tensor]], p: torch.Tensor,
          keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``sum_j p_j cores[j][k]`` of every key ``k``."""
    return {k: sum(float(p[j]) * cores[j][k] for j in range(len(cores))) for k in keys}


def adapt(cores: list[dict[str, torch.Tensor]], p: torch.Tensor, p0: torch.Tensor,
          grads: Mapping[str, torch.Tensor], own: int, lr: float, dr_lr: float,
          lam: float, mu: float) -> None:
    """One APPLE step, in place: ``own``'s core moves against ``grads`` (weighted by its
    ``p``), then every ``p_j`` by its gradient ``mean_k mean(g_k * core_j,k)`` plus the pull
    ``lam mu (p_j - p0_j)`` (PFLlib's order: the cores after the own core's step)."""
    for k, g in grads.items():
        cores[own][k] -= lr * float(p[own]) * g
    for j in range(len(cores)):
        grad = sum(float((g * cores[j][k]).mean()) for k, g in grads.items()) / len(grads)
        p[j] -= dr_lr * (grad + lam * mu * (float(p[j]) - float(p0[j])))


def flat_cores(cores: Mapping[int, Arrays]) -> Arrays:
    return {f"{j}.{k}": v for j, core in sorted(cores.items()) for k, v in core.items()}


def split_cores(flat: Mapping[str, np.ndarray], count: int, keys: Sequence[str]
                ) -> list[dict[str, torch.Tensor]]:
    missing = [f"{j}.{k}" for j in range(count) for k in keys if f"{j}.{k}" not in flat]
    if missing:
        raise ConfigError(f"exchange=apple: the payload lacks cores {missing[:3]} "
                          f"({len(missing)} arrays)")
    return [{k: torch.from_numpy(np.array(flat[f"{j}.{k}"])) for k in keys}
            for j in range(count)]


class APPLEExchange(WeightExchange):
    name = "apple"

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.cores: dict[int, Arrays] = {}  # slot -> that site's last core (server)
        self.slots: dict[int, int] = {}
        self.counts: dict[int, int] = {}  # slot -> its training images

    def check(self) -> None:
        super().check()
        if isinstance(self.detector, Phased) and len(self.detector.parts(self.cfg)) > 1:
            raise ConfigError(f"exchange=apple mixes every part of the module at every step, "
                              f"but detector={self.detector.name} trains its module part by "
                              "part (Phased): the parts a round does not train would move "
                              "with the mixture")
        c = self.cfg.apple
        if self.cfg.num_clients < 2:
            raise ConfigError("exchange=apple mixes sites' core models: num_clients >= 2")
        for name, value in (("dr_lr", c.dr_lr), ("mu", c.mu)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"apple.{name} must be finite and >= 0, got {value}")
        if not 0 < c.decay <= 1:
            raise ConfigError(f"apple.decay must be in (0, 1], got {c.decay}")

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.cores = {j: dict(self.weights) for j in range(self.cfg.num_clients)}
        self.slots, self.counts = {}, {}

    def p0(self) -> np.ndarray:
        """The sites' shares of the training images (uniform until every site is known)."""
        m = self.cfg.num_clients
        if len(self.counts) < m:
            return np.full(m, 1.0 / m)
        n = np.array([self.counts[j] for j in range(m)], dtype=np.float64)
        return n / n.sum()

    def payload(self, key: int, round_t: int) -> Records:
        slot = slot_of(self.slots, key, self.cfg.num_clients, self.name)
        return {CORES: flat_cores(self.cores),
                META: {"slot": np.asarray([slot]), "p0": self.p0()}}

    def evaluation_payload(self, key: int) -> Records:
        return {}  # a site scores with its own personalised model

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        for u in uploads:
            slot = slot_of(self.slots, u.key, self.cfg.num_clients, self.name)
            self.cores[slot] = {**self.cores[slot], **u.records[WEIGHTS]}
            self.counts[slot] = int(u.num_examples)
        # the cores' mean: what robust aggregation measures uploads against
        self.weights = {k: np.mean([c[k] for c in self.cores.values()], axis=0).astype(
            v.dtype) for k, v in self.weights.items()}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "cores": {str(j): c for j, c in self.cores.items()},
                "slots": dict(self.slots), "counts": dict(self.counts)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.cores = {int(j): dict(c) for j, c in state["cores"].items()}
        self.slots = {int(k): int(v) for k, v in state["slots"].items()}
        self.counts = {int(k): int(v) for k, v in state["counts"].items()}

    # -- site ------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        if CORES not in payload or META not in payload:
            raise ConfigError("exchange=apple: the payload carries no core models")
        c, m = self.cfg.apple, self.cfg.num_clients
        module = self.detector.module()
        params = [k for k, _ in module.named_parameters() if k in set(self.keys())]
        own = int(np.asarray(payload[META]["slot"]).reshape(-1)[0])
        p0 = torch.from_numpy(np.asarray(payload[META]["p0"], dtype=np.float64))
        cores = split_cores(payload[CORES], m, self.keys())
        p = site_state[P].clone() if P in site_state else torch.full((m,), 1.0 / m,
                                                                       dtype=torch.float64)
        lam = lam_at(round_t, self.cfg.train.rounds, c.decay)
        lr = self.cfg.train.lr * m

        def personalise(module: torch.nn.Module) -> None:
            with torch.no_grad():
                mix = mixed(cores, p, params)
                for k, prm in module.named_parameters():
                    if k in mix:
                        prm.copy_(mix[k].to(prm))

        def relate(module: torch.nn.Module) -> None:
            grads = {k: prm.grad.detach().cpu() for k, prm in module.named_parameters()
                     if k in params and prm.grad is not None}
            if grads:
                with torch.no_grad():
                    adapt(cores, p, p0, grads, own, lr, c.dr_lr, lam, c.mu)

        personalise(module)
        self.round_t = round_t
        info = self.detector.fit(features, None, round_t,
                                 TrainHooks(after_backward=relate, after_step=personalise))
        site_state[P] = p
        buffers = {k: v for k, v in module.state_dict().items() if k not in set(params)}
        core = {k: (cores[own][k] if k in params else buffers[k].detach().cpu())
                for k in self.keys()}
        keys = self.round_keys(round_t)
        return {WEIGHTS: {k: np.ascontiguousarray(core[k].numpy()) for k in keys}}, info
