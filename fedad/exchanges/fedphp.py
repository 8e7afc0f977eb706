"""FedPHP (Li et al., ECML PKDD 2021, "FedPHP: Federated Personalization with Inherited
Private Models"; ``FedPHPConfig``, read from PFLlib's ``clientphp``): FedAvg of the module,
and at each site an inherited private model.

A site's round (round ``t`` of ``T``):

1. it loads the global weights and trains them with
   ``(1 - lam) * task + lam * MMD(rep(local), rep(private))``: the detector's own loss
   and the MMD (:func:`fedad.components.mmd.mmd`) between the representation (the
   module's ``representation`` part, FedDyMem's projection) of the model being trained and
   of the private model, frozen, on the same inputs (``fedphp.rows`` positions drawn per
   step); in round 1, before any inheritance, the private model is the received global;
2. it uploads the trained weights (averaged by the server as FedAvg's);
3. the private model inherits them: ``private <- (1 - mu_t) * local + mu_t * private``,
   ``mu_t = mu * t / T``, of the parameters and, with the same weights, of the floating
   buffers (BatchNorm's running mean and variance), so the private model's normalisation
   statistics match its weights (PFLlib mixes parameters only and leaves the local
   model's statistics under the mixed weights); integer buffers (BatchNorm's batch count)
   are the local model's.

A site scores with its private model (the personalised one the method is named after;
PFLlib's evaluation scores the local model just trained, kept as ``fedphp.score_with=local``).
The private model is the site's own: it is kept in the site's state and never uploaded.
"""

from __future__ import annotations

import copy

import torch

from fedad.components.mmd import mmd
from fedad.components.training import TrainHooks
from fedad.detectors.base import FitInfo
from fedad.detectors.capabilities import Represents
from fedad.errors import ConfigError
from fedad.exchanges.records import Records
from fedad.exchanges.representation import Capture, part_name, rows
from fedad.exchanges.weights import WEIGHTS, WeightExchange

PRIVATE = "fedphp.private."  # site-state prefix of the private model's parameters


def inherit(local: dict[str, torch.Tensor], private: dict[str, torch.Tensor],
            mu: float) -> dict[str, torch.Tensor]:
    """``(1 - mu) * local + mu * private`` of every entry of ``local``."""
    return {k: (1 - mu) * local[k] + mu * private[k] for k in local}


def mixed_keys(module: torch.nn.Module) -> list[str]:
    """The state entries the private model inherits: every parameter and every floating
    buffer (BatchNorm's running statistics, mixed with the weights they normalise for)."""
    return ([k for k, _ in module.named_parameters()]
            + [k for k, b in module.named_buffers() if b.is_floating_point()])


class FedPHPExchange(WeightExchange):
    name = "fedphp"
    requires = (Represents,)

    def check(self) -> None:
        super().check()
        part_name(self.detector)
        c = self.cfg.fedphp
        if not 0 <= c.lam < 1:
            raise ConfigError(f"fedphp.lam must be in [0, 1) (1 drops the task loss), got "
                              f"{c.lam}")
        if not 0 <= c.mu <= 1:
            raise ConfigError(f"fedphp.mu must be in [0, 1], got {c.mu}")
        if c.rows < 2:
            raise ConfigError(f"fedphp.rows must be >= 2 (an MMD compares samples), got "
                              f"{c.rows}")

    def evaluation_payload(self, key: int) -> Records:
        return {}  # a site scores with its own model, not the global one

    def fit(self, features: torch.Tensor, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        if WEIGHTS not in payload:
            raise ConfigError("exchange=fedphp: the payload carries no global weights")
        c = self.cfg.fedphp
        module = self.detector.module()
        self.load_weights(payload[WEIGHTS])
        private = copy.deepcopy(module).eval().requires_grad_(False)
        names = mixed_keys(module)
        if any(PRIVATE + k in site_state for k in names):  # inherited in an earlier round
            # (a state saved before buffers were inherited holds parameters only)
            private.load_state_dict({**private.state_dict(),
                                     **{k: site_state[PRIVATE + k] for k in names
                                        if PRIVATE + k in site_state}})
        part = self.detector.representation()
        private_part = private.get_submodule(part_name(self.detector))
        draw = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + round_t)

        def objective(_module: torch.nn.Module, task: torch.Tensor) -> torch.Tensor:
            """Step 1: ``(1 - lam) * task + lam * MMD(rep, private rep)``; a step
            that ran no forward through the representation keeps its task loss."""
            got = cap.take()
            if got is None:
                return task
            x, rep = got
            with torch.no_grad():
                ref = private_part(x)
            a, b = rows(rep), rows(ref)
            idx = torch.randperm(len(a), generator=draw)[:c.rows].to(a.device)
            return (1 - c.lam) * task + c.lam * mmd(a[idx], b[idx])

        self.round_t = round_t
        with Capture(part) as cap:
            info = self.detector.fit(features, None, round_t, TrainHooks(objective=objective))
        upload = {WEIGHTS: self.module_weights(self.round_keys(round_t))}
        mu_t = c.mu * round_t / max(self.cfg.train.rounds, 1)
        state, kept = module.state_dict(), private.state_dict()
        mine = inherit({k: state[k].detach().clone() for k in names},
                       {k: kept[k] for k in names}, mu_t)
        site_state.update({PRIVATE + k: v.detach().cpu().clone() for k, v in mine.items()})
        if c.score_with == "private":
            with torch.no_grad():
                for k in names:
                    state[k].copy_(mine[k])
        return upload, info
