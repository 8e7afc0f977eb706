"""Strategies of the weight-exchanging baselines. FedAvg, FedProx and FedBN use Flower's own
``FedAvg``/``FedProx`` for the arithmetic (FedBN differs only on the client: BatchNorm tensors
are never sent); SCAFFOLD and Local are written here (Flower has neither). With
``robust.enabled`` outlying updates are dropped (:mod:`fedad.robust`) and the rest averaged
with Flower's ``FedTrimmedAvg``."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg

from fedad.baselines.scaffold import server_update, zeros_like_state
from fedad.components.validate import check_state
from fedad.config import RunConfig
from fedad.detectors.registry import round_config
from fedad.errors import BankError
from fedad.payload import ARRAYS, CONFIG, CV_DELTA, CV_SERVER
from fedad.robust import flat_update
from server.loop import RoundLoop, who


def upload_problem(content: RecordDict, key: str, reference: dict[str, tuple] | None,
                   who: str) -> str | None:
    """What is wrong with the ArrayRecord ``key`` of a reply (:func:`check_state`: keys and
    shapes of ``reference``, float, finite), or ``None``."""
    if key not in content.array_records:
        return f"no {key!r} in the reply"
    try:
        check_state({k: v.numpy() for k, v in content.array_records[key].items()}, who,
                    reference, what=key)
    except BankError as exc:
        return str(exc).removeprefix(f"{who}: ")
    return None


def shapes(state: dict | ArrayRecord) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


class WeightStrategy(RoundLoop):
    """Round loop for ``local``, ``fedavg``, ``fedprox``, ``scaffold`` and ``fedbn``."""

    def __init__(self, cfg: RunConfig, node_ids: list[int]) -> None:
        super().__init__(cfg, node_ids)
        n = len(node_ids)
        common = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n,
                      min_evaluate_nodes=n, min_available_nodes=n)
        # Flower's weighted mean for FedAvg, FedProx and FedBN (FedProx differs only on the
        # client); messages go to this run's nodes only (configure_train below)
        self.inner = FedAvg(**common)
        # robust aggregation: the kept uploads' coordinate-wise trimmed mean (Flower's)
        self.averaging = (FedTrimmedAvg(beta=cfg.robust.trim, **common)
                          if cfg.robust.enabled else self.inner)
        self.sent: dict[str, np.ndarray] = {}  # the global weights of the round in flight
        self.payload_key = None if cfg.method == "local" else ARRAYS
        self.c_global: dict[str, torch.Tensor] | None = None
        self.last_keys: list[str] = []  # payload keys of the last accepted reply
        # {key: shape} every upload must match: the global model's (set by start(); without
        # it, the first well-formed reply's)
        self.reference: dict[str, dict[str, tuple]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord | None,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if arrays is not None and self.cfg.robust.enabled:
            self.sent = {k: v.numpy() for k, v in arrays.items()}
        if self.cfg.method == "local":
            conf = ConfigRecord({**config, "server-round": server_round})
            return self._messages(MessageType.TRAIN, RecordDict({CONFIG: conf}))
        if self.cfg.method != "scaffold":
            # FedAvg's message (FedProx's mu added), to this run's nodes only
            conf = ConfigRecord({**config, "server-round": server_round,
                                 **round_config(self.cfg)})
            return self._messages(MessageType.TRAIN,
                                  RecordDict({ARRAYS: arrays, CONFIG: conf}))
        if self.c_global is None:  # control variates cover trainable parameters only
            params = arrays.to_torch_state_dict()
            self.c_global = zeros_like_state(
                {k: v for k, v in params.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))})
        conf = ConfigRecord({**config, "server-round": server_round})
        content = RecordDict({ARRAYS: arrays, CV_SERVER: ArrayRecord(
            torch_state_dict=self.c_global), CONFIG: conf})
        return self._messages(MessageType.TRAIN, content)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, dict | None]:
        required = {"local": (), "scaffold": (ARRAYS, CV_DELTA)}.get(self.cfg.method, (ARRAYS,))
        if self.c_global is not None:
            self.reference[CV_DELTA] = shapes(self.c_global)
        msgs = []
        for msg in self.ok_replies(replies, server_round):
            problems = [p for k in required
                        if (p := upload_problem(msg.content, k, self.reference.get(k),
                                                who(msg)))]
            if problems:
                self._reject(server_round, who(msg), "; ".join(problems))
                continue
            for k in required:
                self.reference.setdefault(k, shapes(msg.content[k]))
            if required:
                self.last_keys = sorted(msg.content[ARRAYS].keys())
            msgs.append(msg)
        if self.cfg.robust.enabled and self.cfg.method != "local":
            vectors = [flat_update({k: v.numpy() for k, v in m.content[ARRAYS].items()},
                                   self.sent) for m in msgs]
            keep = self.robust_keep(server_round, msgs, vectors)
            msgs = [m for m, k in zip(msgs, keep, strict=True) if k]
        self.require_enough(server_round, msgs)
        t = time.perf_counter()
        arrays = None
        if self.cfg.method == "scaffold":
            arrays = self._scaffold(msgs)
        elif self.cfg.method != "local":
            arrays, _ = self.averaging.aggregate_train(server_round, msgs)
        self.last_aggregate_seconds = time.perf_counter() - t
        return arrays, self.train_summary(msgs)

    def _scaffold(self, msgs: list[Message]) -> ArrayRecord:
        """x <- x + lr_g * mean(y_i - x); c <- c + sum(delta c_i) / N (option II)."""
        x = self._x
        ys = [m.content[ARRAYS].to_torch_state_dict() for m in msgs]
        dcs = [m.content[CV_DELTA].to_torch_state_dict() for m in msgs]
        delta_ys = [{k: y[k] - x[k] for k in x} for y in ys]
        x_new, c_new = server_update(x, self.c_global, delta_ys, dcs, len(self.node_ids),
                                     self.cfg.train.global_lr)
        self.c_global = c_new
        self._x = x_new
        return ArrayRecord(torch_state_dict=x_new)

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "x": self._x, "c_global": self.c_global,
                "reference": self.reference, "last_keys": self.last_keys}

    def restore(self, ckpt: dict) -> None:
        super().restore(ckpt)
        self._x, self.c_global = ckpt["x"], ckpt["c_global"]
        self.reference, self.last_keys = dict(ckpt["reference"]), list(ckpt["last_keys"])

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,  # type: ignore[override]
              **kwargs) -> ArrayRecord | None:
        if self.done_round is None:  # a fresh run (a resumed one restored these)
            self._x = initial_arrays.to_torch_state_dict() if initial_arrays is not None else {}
            if initial_arrays is not None:
                self.reference[ARRAYS] = shapes(self._x)
        return super().start(grid, initial_arrays, **kwargs)
