"""The round loop every fedad strategy shares: send, collect (with progress and bytes),
aggregate, evaluate, record. Subclasses say what a round sends and how replies combine."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedad.config import RunConfig
from fedad.detectors.registry import evaluated, label, schedule
from fedad.payload import CONFIG, METRICS
from server.transport import Exchange, exchange

log = logging.getLogger("fedad")
# test metrics, then validation metrics (held-out normals + synthetic defects; clients
# with too few images hold none out and do not report them)
EVAL_KEYS = ("i_auroc", "p_auroc", "pro", "i_f1_max", "p_f1_max", "val_i_auroc",
             "val_p_auroc")
TRAIN_SECONDS = ("seconds-features", "seconds-train", "seconds-reduce")


def who(msg: Message) -> str:
    """``client node <id>``, with its partition (site) when the reply names it."""
    name = f"client node {msg.metadata.src_node_id}"
    if msg.has_content() and METRICS in msg.content.metric_records:
        pid = msg.content.metric_records[METRICS].get("partition-id")
        if pid is not None:
            name += f" (partition {int(pid)})"
    return name


def mean_std(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {}


class RoundLoop(Strategy):
    """Round loop with progress, byte accounting and a per-round history.

    ``payload_key`` names the ArrayRecord that carries the global state (``bank`` for
    FedDyMem, ``arrays`` for weights); ``None`` sends no state (Local).
    """

    payload_key: str | None = "arrays"
    first_round = 1

    def __init__(self, cfg: RunConfig, node_ids: list[int]) -> None:
        self.cfg = cfg
        self.node_ids = node_ids
        self.last_round = cfg.train.rounds
        self.history: list[dict] = []
        self.rejected: list[str] = []  # "round r, client ...: reason", in order
        self.rejected_per_client: dict[str, int] = {}
        self.last_aggregate_seconds = 0.0

    def summary(self) -> None:
        log.info("%s: %d clients, %s", label(self.cfg), len(self.node_ids),
                 schedule(self.cfg))

    def _messages(self, kind: str, content: RecordDict) -> list[Message]:
        return [Message(content=content, message_type=kind, dst_node_id=n)
                for n in self.node_ids]

    def _reject(self, rnd: int, client: str, reason: str) -> None:
        """Leave a client's reply out, saying which round, which client and why."""
        why = f"round {rnd}, {client}: {reason}"
        log.warning("left out of aggregation: %s", why)
        self.rejected.append(why)
        self.rejected_per_client[client] = self.rejected_per_client.get(client, 0) + 1

    def ok_replies(self, replies: Iterable[Message], rnd: int, what: str = "") -> list[Message]:
        """Replies without error; errors are logged and recorded."""
        out = []
        for msg in replies:
            if msg.has_error():
                self._reject(rnd, who(msg), f"{what}error reply: {msg.error.reason}")
            else:
                out.append(msg)
        return out

    def train_summary(self, msgs: list[Message]) -> dict:
        metrics = [m.content[METRICS] for m in msgs]
        return {
            "clients": len(msgs),
            "loss": mean_std(float(m["loss"]) for m in metrics),
            "seconds-client": {k: max(float(m[k]) for m in metrics) for k in TRAIN_SECONDS},
            "seconds-client-sum": {k: sum(float(m[k]) for m in metrics) for k in TRAIN_SECONDS},
            "seconds-aggregate": self.last_aggregate_seconds,
        }

    # -- evaluation (the same for every method) ---------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not evaluated(server_round, self.last_round, self.cfg.eval_every):
            return []
        last = server_round == self.last_round
        conf = ConfigRecord({**(config or {}), "round": server_round, "final": last})
        content = {CONFIG: conf}
        if self.payload_key is not None and arrays is not None:
            content[self.payload_key] = arrays
        return self._messages(MessageType.EVALUATE, RecordDict(content))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> dict | None:
        per_client: dict[int, dict[str, float]] = {}
        seconds, seconds_features = [], []
        for msg in self.ok_replies(replies, server_round, "evaluation "):
            m = msg.content[METRICS]
            pid = int(m["partition-id"])
            per_client[pid] = {k: float(m[k]) for k in EVAL_KEYS if k in m}
            seconds.append(float(m["seconds-eval"]))
            seconds_features.append(float(m["seconds-features"]))
        if not per_client:
            return None
        keys = [k for k in EVAL_KEYS if any(k in v for v in per_client.values())]
        return {
            "per_client": {str(p): per_client[p] for p in sorted(per_client)},
            **{k: mean_std(v[k] for v in per_client.values() if k in v) for k in keys},
            "seconds-client": {"seconds-eval": max(seconds)},
            "seconds-client-sum": {"seconds-eval": sum(seconds),
                                   "seconds-features": sum(seconds_features)},
        }

    # -- the loop ------------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None,  # type: ignore[override]
              num_rounds: int | None = None, timeout: float | None = None,
              train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              on_round=None) -> ArrayRecord | None:
        """Rounds ``first_round..num_rounds`` of train + aggregate (+ evaluate). Returns the
        final global state. ``on_round(record)`` runs after each round (results writing)."""
        num_rounds = self.last_round if num_rounds is None else num_rounds
        timeout = self.cfg.round_timeout if timeout is None else timeout
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        self.summary()
        state = initial_arrays
        for rnd in range(self.first_round, num_rounds + 1):
            t0 = time.perf_counter()
            record: dict = {"round": rnd}
            tx = exchange(grid, list(self.configure_train(rnd, state, train_config, grid)),
                          timeout, f"round {rnd}/{num_rounds} train")
            self._note_missing(tx, rnd)
            new_state, record["train"] = self.aggregate_train(rnd, tx.replies)
            state = new_state if new_state is not None else state
            record["bytes"] = {"sent": tx.bytes_sent, "received": tx.bytes_received,
                               "received_per_client": tx.bytes_received / max(1, len(tx.replies))}
            record["seconds"] = {"train_exchange": tx.seconds,
                                 "aggregate": self.last_aggregate_seconds}
            ev = None
            if rnd > 0:
                msgs = list(self.configure_evaluate(rnd, state, evaluate_config, grid))
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
        return state

    def _note_missing(self, ex: Exchange, rnd: int) -> None:
        for node in ex.missing:
            self._reject(rnd, f"client node {node}", "no reply (timeout)")

    def _log_round(self, record: dict, num_rounds: int) -> None:
        tr = record["train"]
        parts = [f"[round {record['round']}/{num_rounds}] {tr['clients']} clients",
                 f"up {record['bytes']['received_per_client'] / 1e6:.2f} MB/client",
                 f"aggregate {record['seconds']['aggregate']:.1f}s"]
        if tr.get("loss") and record["round"] > 0:
            parts.append(f"loss {tr['loss']['mean']:.4f}")
        ev = record.get("evaluate")
        if ev:
            for k in ("i_auroc", "p_auroc", "pro"):
                if k in ev and not math.isnan(ev[k]["mean"]):
                    parts.append(f"{k} {ev[k]['mean']:.4f}±{ev[k]['std']:.4f}")
            if "val_i_auroc" in ev:  # the validation split (held-out normals + defects)
                parts.append(f"validation i_auroc {ev['val_i_auroc']['mean']:.4f}")
        parts.append(f"{record['seconds']['round']:.1f}s")
        log.info(" | ".join(parts))
