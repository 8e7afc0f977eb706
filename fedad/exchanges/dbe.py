"""DBE (Zhang et al., NeurIPS 2023, "Eliminating Domain Bias for Federated Learning in
Representation Space"; ``DBEConfig``, read from PFLlib's ``clientdbe``): FedAvg of the
module with two changes at each site.

* **Personalised representation bias** (DBE's PRBM): the module's ``shift`` buffer ``(C,)``
  is added to its representation (the ``representation`` part's output, FedDyMem's
  projection) before the rest of the module. It is the site's own: trained by plain SGD at
  ``train.lr`` beside the module's optimiser, never uploaded (a local key, as FedBN's
  BatchNorm), and scored with.
* **Mean regularisation** (DBE's MR): the running mean ``m`` of the representation (channel
  means over the batch and positions, momentum ``dbe.momentum``, reset each round; the
  gradient flows through the current batch's term) is pulled to the global mean ``g`` by
  ``dbe.kl_weight * mean(0.5 (m - g)^2)`` added to the loss.

A site uploads the module's weights and its last ``m``; the server averages the weights
(FedAvg) and sets ``g`` to the image-weighted mean of the uploaded ``m``. Round 1 has no
``g``: it trains neither the bias nor the regulariser (DBE's initialisation period, whose
running means give the first ``g``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedad.components.training import TrainHooks
from fedad.components.validate import check_state
from fedad.detectors.base import FitInfo
from fedad.detectors.capabilities import ShiftedRepresentation
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.exchanges.records import Records
from fedad.exchanges.representation import Capture, part_name, rows
from fedad.exchanges.weights import WEIGHTS, WeightExchange

MEAN = "dbe"  # up: the site's running mean; down: the global mean


class DBEExchange(WeightExchange):
    name = "dbe"
    requires = (ShiftedRepresentation,)
    upload_records = (WEIGHTS, MEAN)

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.global_mean: np.ndarray | None = None  # g (server)

    def local_keys(self, module: torch.nn.Module) -> set[str]:
        return {self.detector.shift_key()}

    def channels(self) -> int:
        return int(self.detector.representation_shift().numel())

    def check(self) -> None:
        part_name(self.detector)
        super().check()
        c = self.cfg.dbe
        if not 0 < c.momentum <= 1:
            raise ConfigError(f"dbe.momentum must be in (0, 1], got {c.momentum}")
        if not np.isfinite(c.kl_weight) or c.kl_weight < 0:
            raise ConfigError(f"dbe.kl_weight must be finite and >= 0, got {c.kl_weight}")

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.global_mean = None

    def payload(self, key: int, round_t: int) -> Records:
        out = super().payload(key, round_t)
        if self.global_mean is not None:
            out[MEAN] = {"mean": self.global_mean}
        return out

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        out = super().validate(upload, who, round_t)  # both records present, the weights checked
        mean = check_state(upload[MEAN], who, {"mean": (self.channels(),)}, "running mean")
        return {**out, MEAN: mean}

    def descriptor(self, upload: Records) -> np.ndarray:
        return np.concatenate([super().descriptor(upload),
                               np.asarray(upload[MEAN]["mean"], dtype=np.float64)])

    def trains_representation(self, round_t: int) -> bool:
        """Whether round ``round_t`` trains the representation part (a phased detector's
        other phases do not: asymst's DDPM rounds)."""
        prefix = part_name(self.detector) + "."
        return any(k.startswith(prefix) for k in self.round_keys(round_t))

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        if not uploads:
            return
        super().aggregate(uploads, round_t)
        if not self.trains_representation(round_t):
            return  # no representation ran this round: the global mean stays
        w = np.array([u.num_examples for u in uploads], dtype=np.float64)
        means = np.stack([np.asarray(u.records[MEAN]["mean"], dtype=np.float64)
                          for u in uploads])
        self.global_mean = (w[:, None] * means).sum(0) / max(w.sum(), 1.0)
        self.global_mean = self.global_mean.astype(np.float32)

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.global_mean is not None:
            out["global_mean"] = self.global_mean
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        g = state.get("global_mean")
        self.global_mean = None if g is None else np.asarray(g, dtype=np.float32)

    # -- site ------------------------------------------------------------------------------
    def fit(self, features: torch.Tensor, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        if WEIGHTS in payload:
            self.load_weights(payload[WEIGHTS])
        c = self.cfg.dbe
        det = self.detector
        part = det.representation()
        g = (torch.from_numpy(np.array(payload[MEAN]["mean"], dtype=np.float32))
             if MEAN in payload else None)
        shift = det.representation_shift().detach().clone().requires_grad_(g is not None)
        det.set_representation_shift(shift)  # the buffer, as a leaf the loss differentiates
        running = torch.zeros_like(shift, requires_grad=False)
        pending: list[torch.Tensor] = []

        def regularise(_module: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
            got = cap.take()
            if got is None:  # a step that ran no forward through the representation
                pending[:] = []
                return loss.new_zeros(())
            _, rep = got
            m = (1 - c.momentum) * running.to(rep) + c.momentum * rows(rep).mean(0)
            pending[:] = [m]
            if g is None:
                return m.new_zeros(())
            return c.kl_weight * (0.5 * (m - g.to(m)).pow(2)).mean()

        def after(_module: torch.nn.Module) -> None:
            nonlocal running
            if pending:
                running = pending[0].detach().cpu()
            if shift.grad is not None:
                shift.sub_(self.cfg.train.lr * shift.grad)
                shift.grad = None

        self.round_t = round_t
        with Capture(part) as cap:
            info = self.detector.fit(features, None, round_t, TrainHooks(
                objective=lambda m, loss: loss + regularise(m, loss), after_step=after))
        det.set_representation_shift(shift.detach())
        return {WEIGHTS: self.module_weights(self.round_keys(round_t)),
                MEAN: {"mean": np.ascontiguousarray(running.numpy().astype(np.float32))}}, info
