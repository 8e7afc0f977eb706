"""RowFed as a personalised weight exchange (``exchange=rowfed``; ``RowFedExchangeConfig``):
one matrix of the detector's module (``rowfed.param``, FedDyMem's projection by default)
is each site's own, fused row by row across sites by RowFed's linearised ADMM
(:mod:`fedad.rowfed.admm`); every other weight is averaged as FedAvg does.

The matrix ``W`` ``(C_out, C_in[, 1, 1])`` is read as ``B = W^T`` ``(C_in, C_out)``: row
``j`` is input channel ``j``'s weights to every output (the covariate's effects on every
response, as in the regression RowFed studies).

* **server**: keeps every site's last ``B_m`` (a site absent from a round keeps its own),
  the fusion variables ``theta`` and duals ``v`` of every pair, and the averaged weights;
  site ``m`` receives the averaged weights with its own ``B_m`` in place of the matrix,
  and its target ``U_m`` with the coupling weight ``rho (M - 1)``. After a round's uploads:
  the average of the shared weights, the uploaded ``B_m``, then every pair's
  ``theta = prox(B_m - B_m' + v / rho)`` and ``v += rho (B_m - B_m' - theta)``;
* **site**: trains the whole module with ``rho (M - 1) / 2 ||W - U_m^T||^2`` added to the
  loss and, with ``rowfed.sparsity_lam > 0``, the sparsity prox on ``W`` after every step
  (a proximal step of the learning rate ``train.lr``, a priori: with Adam it is a
  heuristic, not a proximal-gradient step); it uploads every weight, the matrix included.

Which sites train in a round is the engine's ``train.participation`` (RowFed's ``pi``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from fedad.components.training import TrainHooks, part_of
from fedad.detectors.capabilities import RowMatrix
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.exchanges.records import Records
from fedad.exchanges.slots import slot_of
from fedad.exchanges.weights import WEIGHTS, WeightExchange
from fedad.rowfed.admm import RowFedConfig, RowFedState, row_clusters, server_step, targets
from fedad.rowfed.config import RowFedSettings
from fedad.rowfed.penalties import prox_entries

TARGET = "rowfed"  # the record of a site's target U_m and coupling weight


def to_matrix(w: np.ndarray) -> np.ndarray:
    """``W`` ``(C_out, C_in[, 1, 1])`` -> ``B = W^T`` ``(C_in, C_out)`` (float64)."""
    w = np.asarray(w, dtype=np.float64)
    return w.reshape(w.shape[0], -1).T


def from_matrix(b: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``B`` back to ``W``'s ``shape`` and ``dtype``."""
    return np.ascontiguousarray(np.asarray(b).T).reshape(shape).astype(dtype)


class RowFedExchange(WeightExchange):
    name = "rowfed"
    requires = (RowMatrix,)

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.slots: dict[int, int] = {}  # transport key -> site slot 0..M-1 (server)
        self.admm: RowFedState | None = None

    # -- config ----------------------------------------------------------------------------
    def param(self) -> str:
        """The personalised matrix's key: ``rowfed.param``, or the one the detector
        declares (:class:`~fedad.detectors.capabilities.RowMatrix`)."""
        return self.cfg.rowfed.param or self.detector.row_matrix(self.cfg)

    def step_size(self) -> float:
        """The learning rate of the part that holds the matrix (the sparsity prox's)."""
        parts = self.detector.parts(self.cfg)
        return parts[part_of(self.param(), parts)].optim.lr

    def admm_config(self) -> RowFedConfig:
        """The solver's config: the run's RowFed settings (one class, one set of
        defaults), with participation and seed from ``train.*``."""
        settings = {f.name: getattr(self.cfg.rowfed, f.name) for f in fields(RowFedSettings)}
        return RowFedConfig(**settings, participation=self.cfg.train.participation,
                            seed=self.cfg.train.seed)

    def check(self) -> None:
        super().check()
        name = self.param()
        params = dict(self.detector.module().named_parameters())
        if name not in params:
            raise ConfigError(f"rowfed.param={name!r} is not a parameter of detector="
                              f"{self.detector.name}'s module (its matrices: "
                              + ", ".join(k for k, v in params.items() if v.dim() >= 2)
                              + ")")
        if params[name].dim() < 2 or params[name][0].numel() != params[name].shape[1]:
            raise ConfigError(f"rowfed.param={name!r} has shape {tuple(params[name].shape)}:"
                              " RowFed needs a matrix (C_out, C_in) or a 1x1 convolution")
        if self.cfg.num_clients < 2:
            raise ConfigError("exchange=rowfed fuses sites with each other: num_clients >= 2")
        cfg = self.admm_config()
        cfg.check()
        # the penalties' proxes must be well posed at rho (raises naming the condition)
        prox_entries(np.zeros(1), cfg.fusion_penalty, cfg.fusion_lam, cfg.rho, cfg.a)
        if cfg.sparsity_lam > 0:
            prox_entries(np.zeros(1), cfg.sparsity_penalty, cfg.sparsity_lam,
                         1.0 / self.step_size(), cfg.a)

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        b0 = to_matrix(self.weights[self.param()])
        m = self.cfg.num_clients
        self.admm = RowFedState.start(m, *b0.shape, np.repeat(b0[None], m, 0))
        self.slots = {}

    def slot(self, key: int) -> int:
        return slot_of(self.slots, key, len(self.admm.b), self.name)

    def payload(self, key: int, round_t: int) -> Records:
        name = self.param()
        m = self.slot(key)
        ref = self.weights[name]
        own = from_matrix(self.admm.b[m], ref.shape, ref.dtype)
        u = targets(self.admm, self.cfg.rowfed.rho)[m]
        weight = self.cfg.rowfed.rho * max(len(self.admm.b) - 1, 1)
        return {WEIGHTS: {**self.weights, name: own},
                TARGET: {"target": from_matrix(u, ref.shape, np.float32),
                         "weight": np.asarray([weight])}}

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        if not uploads:
            return
        super().aggregate(uploads, round_t)
        name = self.param()
        if name not in self.round_keys(round_t):
            return  # a phase that trains another part (asymst's DDPM): the rows wait
        for u in uploads:
            self.admm.b[self.slot(u.key)] = to_matrix(u.records[WEIGHTS][name])
        server_step(self.admm, self.admm_config())
        self.admm.round = round_t

    def clusters(self) -> np.ndarray:
        """``(C_in, M)`` cluster labels of each row across the site slots."""
        return row_clusters(self.admm, self.cfg.rowfed.cluster_tol)

    def state(self) -> dict[str, Any]:
        a = self.admm
        return {**super().state(), "slots": dict(self.slots),
                "admm": {"b": a.b, "theta": a.theta, "v": a.v, "pairs": a.pairs,
                         "round": a.round}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.slots = {int(k): int(v) for k, v in state["slots"].items()}
        a = state["admm"]
        self.admm = RowFedState(b=np.array(a["b"]), theta=np.array(a["theta"]),
                                v=np.array(a["v"]), pairs=np.array(a["pairs"]),
                                round=int(a["round"]))

    # -- site ------------------------------------------------------------------------------
    def hooks(self, site_state: dict[str, torch.Tensor], payload: Records
              ) -> TrainHooks | None:
        name, r = self.param(), self.cfg.rowfed
        lr = self.step_size()
        if TARGET not in payload:
            raise ConfigError("exchange=rowfed: the payload carries no target")
        if name not in self.round_keys(self.round_t):
            return None  # this round trains another part (asymst's DDPM): nothing to couple
        target = torch.from_numpy(np.array(payload[TARGET]["target"]))
        weight = float(np.asarray(payload[TARGET]["weight"]).reshape(-1)[0])

        def coupling(module: torch.nn.Module) -> torch.Tensor:
            w = dict(module.named_parameters())[name]
            return 0.5 * weight * (w - target.to(w)).pow(2).sum()

        def sparsify(module: torch.nn.Module) -> None:
            w = dict(module.named_parameters())[name]
            b = prox_entries(to_matrix(w.detach().cpu().numpy()), r.sparsity_penalty,
                             r.sparsity_lam, 1.0 / lr, r.a)
            w.copy_(torch.from_numpy(from_matrix(b, tuple(w.shape), np.float32)).to(w))

        return TrainHooks(objective=lambda m, loss: loss + coupling(m),
                          after_step=sparsify if r.sparsity_lam > 0 else None)
