"""The FedDyMem strategy: what the server does with the clients' banks (paper Alg. 3-5).

Round 0 collects the initial reduced banks (Alg. 4); each later round sends the global bank,
collects the reduced banks and aggregates them by K-means (Alg. 3); evaluation rounds ask
every client to score the global test set with its own head and the global bank. A reply
that is an error, or whose bank is malformed or non-finite, is logged and left out: one
misbehaving client never stops the server.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedad.config import RunConfig
from fedad.errors import BankError
from fedad.memory import aggregate
from fedad.payload import (
    BANK,
    CONFIG,
    METRICS,
    PHASE_INIT,
    PHASE_TRAIN,
    bank_from_arrays,
    bank_to_arrays,
)
from server.transport import Exchange, exchange

log = logging.getLogger("fedad")
EVAL_KEYS = ("i_auroc", "p_auroc", "pro", "i_f1_max", "p_f1_max")
TRAIN_SECONDS = ("seconds-features", "seconds-train", "seconds-reduce")


def _who(msg: Message) -> str:
    return f"client node {msg.metadata.src_node_id}"


def mean_std(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {}


class FedDyMemStrategy(Strategy):
    """Bank aggregation by K-means (or plain average for the ablation)."""

    def __init__(self, cfg: RunConfig, node_ids: list[int]) -> None:
        self.cfg = cfg
        self.node_ids = node_ids
        self.bank_shape: tuple[int, ...] | None = None
        self.history: list[dict] = []
        self.last_aggregate_seconds = 0.0
        self.rejected: list[str] = []

    # -- Flower Strategy interface ---------------------------------------------------------
    def summary(self) -> None:
        log.info("FedDyMem: %d clients, %d rounds x %d local epoch(s), aggregation %s",
                 len(self.node_ids), self.cfg.train.rounds, self.cfg.train.local_epochs,
                 self.cfg.train.aggregation)

    def _messages(self, kind: str, content: RecordDict) -> list[Message]:
        return [Message(content=content, message_type=kind, dst_node_id=n)
                for n in self.node_ids]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        conf = ConfigRecord({**config, "round": server_round,
                             "phase": PHASE_INIT if server_round == 0 else PHASE_TRAIN})
        content = RecordDict({CONFIG: conf} if server_round == 0 else
                             {BANK: arrays, CONFIG: conf})
        return self._messages(MessageType.TRAIN, content)

    def valid_banks(self, replies: Iterable[Message]) -> tuple[list, list[Message]]:
        """The well-formed banks and their replies; everything else is logged and dropped."""
        candidates = []
        for msg in replies:
            if msg.has_error():
                self._reject(f"{_who(msg)}: error reply: {msg.error.reason}")
                continue
            try:
                arrays = {k: v.numpy() for k, v in msg.content[BANK].items()}
                candidates.append((bank_from_arrays(arrays, _who(msg), self.bank_shape), msg))
            except (BankError, KeyError, ValueError, TypeError) as exc:
                self._reject(f"{_who(msg)}: {exc}")
        if self.bank_shape is None and candidates:  # round 0: the majority sets the shape
            self.bank_shape = Counter(tuple(b.shape) for b, _ in candidates).most_common(1)[0][0]
        good = [(b, m) for b, m in candidates if tuple(b.shape) == self.bank_shape]
        for b, m in candidates:
            if tuple(b.shape) != self.bank_shape:
                self._reject(f"{_who(m)}: bank shape {tuple(b.shape)} differs from "
                             f"{self.bank_shape}")
        return [b for b, _ in good], [m for _, m in good]

    def _reject(self, why: str) -> None:
        log.warning("left out of aggregation: %s", why)
        self.rejected.append(why)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, dict | None]:
        banks, msgs = self.valid_banks(replies)
        if not banks:
            raise RuntimeError(f"round {server_round}: no valid bank from any client "
                               f"({'; '.join(self.rejected[-len(self.node_ids):])})")
        t = time.perf_counter()
        bank = aggregate(banks, self.cfg.train.aggregation, seed=self.cfg.train.seed +
                         server_round, niter=self.cfg.train.kmeans_iters,
                         init=self.cfg.train.kmeans_init)
        self.last_aggregate_seconds = time.perf_counter() - t
        metrics = [m.content[METRICS] for m in msgs]
        summary = {
            "clients": len(banks),
            "loss": mean_std(float(m["loss"]) for m in metrics),
            "seconds-client": {k: max(float(m[k]) for m in metrics) for k in TRAIN_SECONDS},
            "seconds-client-sum": {k: sum(float(m[k]) for m in metrics) for k in TRAIN_SECONDS},
            "seconds-aggregate": self.last_aggregate_seconds,
        }
        record = ArrayRecord({k: Array(v) for k, v in bank_to_arrays(bank).items()})
        return record, summary

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        last = server_round == self.cfg.train.rounds
        if not last and server_round % max(1, self.cfg.eval_every):
            return []
        conf = ConfigRecord({**config, "round": server_round, "final": last})
        return self._messages(MessageType.EVALUATE,
                              RecordDict({BANK: arrays, CONFIG: conf}))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> dict | None:
        per_client: dict[int, dict[str, float]] = {}
        seconds, seconds_features = [], []
        for msg in replies:
            if msg.has_error():
                self._reject(f"{_who(msg)}: evaluation failed: {msg.error.reason}")
                continue
            m = msg.content[METRICS]
            pid = int(m["partition-id"])
            per_client[pid] = {k: float(m[k]) for k in EVAL_KEYS if k in m}
            seconds.append(float(m["seconds-eval"]))
            seconds_features.append(float(m["seconds-features"]))
        if not per_client:
            return None
        keys = [k for k in EVAL_KEYS if all(k in v for v in per_client.values())]
        return {
            "per_client": {str(p): per_client[p] for p in sorted(per_client)},
            **{k: mean_std(v[k] for v in per_client.values()) for k in keys},
            "seconds-client": {"seconds-eval": max(seconds)},
            "seconds-client-sum": {"seconds-eval": sum(seconds),
                                   "seconds-features": sum(seconds_features)},
        }

    # -- the round loop ----------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,  # type: ignore[override]
              num_rounds: int | None = None, timeout: float | None = None,
              train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              on_round=None) -> ArrayRecord:
        """Round 0 (initial banks) then ``num_rounds`` rounds of train + aggregate (+
        evaluate). Returns the final global bank. ``on_round(record)`` is called after each
        round with that round's history record (for writing results as they come)."""
        num_rounds = self.cfg.train.rounds if num_rounds is None else num_rounds
        timeout = self.cfg.round_timeout if timeout is None else timeout
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        self.summary()
        bank = initial_arrays
        first = 0 if initial_arrays is None else 1
        for rnd in range(first, num_rounds + 1):
            t0 = time.perf_counter()
            record: dict = {"round": rnd}
            tx = exchange(grid, list(self.configure_train(rnd, bank, train_config, grid)),
                          timeout, f"round {rnd}/{num_rounds} train")
            self._note_missing(tx, rnd)
            bank, record["train"] = self.aggregate_train(rnd, tx.replies)
            record["bytes"] = {"sent": tx.bytes_sent, "received": tx.bytes_received,
                               "received_per_client": tx.bytes_received / max(1, len(tx.replies))}
            record["seconds"] = {"train_exchange": tx.seconds,
                                 "aggregate": self.last_aggregate_seconds}
            ev = None
            if rnd > 0:
                msgs = list(self.configure_evaluate(rnd, bank, evaluate_config, grid))
                if msgs:
                    ex = exchange(grid, msgs, timeout, f"round {rnd}/{num_rounds} evaluate")
                    self._note_missing(ex, rnd)
                    ev = self.aggregate_evaluate(rnd, ex.replies)
                    record["bytes"]["sent"] += ex.bytes_sent
                    record["seconds"]["evaluate_exchange"] = ex.seconds
            record["evaluate"] = ev
            record["seconds"]["round"] = time.perf_counter() - t0
            self.history.append(record)
            self._log_round(record, num_rounds)
            if on_round is not None:
                on_round(record)
        return bank

    def _note_missing(self, ex: Exchange, rnd: int) -> None:
        for node in ex.missing:
            self._reject(f"client node {node}: no reply in round {rnd} (timeout)")

    def _log_round(self, record: dict, num_rounds: int) -> None:
        tr = record["train"]
        parts = [f"[round {record['round']}/{num_rounds}] {tr['clients']} banks",
                 f"up {record['bytes']['received_per_client'] / 1e6:.2f} MB/client",
                 f"aggregate {record['seconds']['aggregate']:.1f}s"]
        if tr["loss"] and record["round"] > 0:
            parts.append(f"loss {tr['loss']['mean']:.4f}")
        ev = record.get("evaluate")
        if ev:
            for k in ("i_auroc", "p_auroc", "pro"):
                if k in ev and not math.isnan(ev[k]["mean"]):
                    parts.append(f"{k} {ev[k]['mean']:.4f}±{ev[k]['std']:.4f}")
        parts.append(f"{record['seconds']['round']:.1f}s")
        log.info(" | ".join(parts))
