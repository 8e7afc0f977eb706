"""The round loop every fedad strategy shares: send, collect (with progress and bytes),
aggregate, evaluate, record. Subclasses say what a round sends and how replies combine."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedad.config import RunConfig
from fedad.detectors.registry import evaluated, label, schedule
from fedad.payload import CONFIG, FILES, METRICS
from fedad.robust import median_outliers
from server.transport import Exchange, exchange

log = logging.getLogger("fedad")
# test metrics, then validation metrics (held-out normals + synthetic defects; clients
# with too few images hold none out and do not report them)
EVAL_KEYS = ("i_auroc", "p_auroc", "pro", "i_f1_max", "p_f1_max", "val_i_auroc",
             "val_p_auroc")
STARTUP = "start-up"  # what rejections before round 1 are filed under
TRAIN_SECONDS = ("seconds-features", "seconds-train", "seconds-reduce")


def who(msg: Message) -> str:
    """``client node <id>``, with its partition (site) when the reply names it."""
    name = f"client node {msg.metadata.src_node_id}"
    if msg.has_content() and METRICS in msg.content.metric_records:
        pid = msg.content.metric_records[METRICS].get("partition-id")
        if pid is not None:
            name += f" (partition {int(pid)})"
    return name


def short_reason(reason: str, limit: int = 300) -> str:
    """The gist of a Flower error reply: the client's exception message without the Ray and
    Flower tracebacks around it (simulation wraps it as ``... Message: <text>'>``)."""
    text = reason.rsplit("Message:", 1)[-1] if "Message:" in reason else reason
    lines = [ln.strip() for ln in text.strip().strip("'>").splitlines() if ln.strip()]
    text = lines[-1] if lines else reason.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        self.partition_of: dict[int, int] = {}  # node id -> partition, from replies seen
        self.robust_log: list[dict] = []  # per round: distances, threshold, dropped
        self.skipped_files: dict[str, list[str]] = {}  # client -> files it left out
        self.global_state: ArrayRecord | None = None  # after the last finished round
        self.done_round: int | None = None

    # -- checkpoint (fedad/checkpoint.py) -------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What a resumed run needs of this strategy (subclasses add their own state)."""
        g = self.global_state
        return {"round": self.done_round, "history": self.history, "rejected": self.rejected,
                "rejected_per_client": self.rejected_per_client,
                "robust_log": self.robust_log, "partition_of": self.partition_of,
                "global": None if g is None else {k: v.numpy() for k, v in g.items()}}

    def restore(self, ckpt: dict) -> None:
        """Take back what :meth:`checkpoint_state` saved."""
        self.done_round = int(ckpt["round"])
        self.history = list(ckpt["history"])
        self.rejected = list(ckpt["rejected"])
        self.rejected_per_client = dict(ckpt["rejected_per_client"])
        self.robust_log = list(ckpt["robust_log"])
        self.partition_of = dict(ckpt["partition_of"])
        g = ckpt["global"]
        self.global_state = None if g is None else ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in g.items()})

    def name(self, node: int) -> str:
        """``client node <id>`` with its partition once a reply has named it."""
        pid = self.partition_of.get(node)
        return f"client node {node}" + (f" (partition {pid})" if pid is not None else "")

    def summary(self) -> None:
        log.info("%s: %d clients, %s", label(self.cfg), len(self.node_ids),
                 schedule(self.cfg))

    def _messages(self, kind: str, content: RecordDict) -> list[Message]:
        return [Message(content=content, message_type=kind, dst_node_id=n)
                for n in self.node_ids]

    def _reject(self, rnd: int | str, client: str, reason: str) -> None:
        """Leave a client's reply out, saying which round, which client and why."""
        why = f"{f'round {rnd}' if isinstance(rnd, int) else rnd}, {client}: {reason}"
        log.warning("left out of aggregation: %s", why)
        self.rejected.append(why)
        self.rejected_per_client[client] = self.rejected_per_client.get(client, 0) + 1

    def ok_replies(self, replies: Iterable[Message], rnd: int | str, what: str = ""
                   ) -> list[Message]:
        """Replies without error; errors are logged and recorded."""
        out = []
        for msg in replies:
            if msg.has_content() and METRICS in msg.content.metric_records:
                pid = msg.content.metric_records[METRICS].get("partition-id")
                if pid is not None:
                    self.partition_of[msg.metadata.src_node_id] = int(pid)
            if msg.has_error():
                self._reject(rnd, self.name(msg.metadata.src_node_id),
                             f"{what}error reply: {short_reason(msg.error.reason)}")
            else:
                out.append(msg)
        return out

    def robust_keep(self, rnd: int, msgs: list[Message], vectors: list) -> list[bool]:
        """Which uploads robust aggregation keeps (all when ``robust.enabled`` is off); the
        dropped ones are recorded with the reason, the round's distances in
        :attr:`robust_log`."""
        if not self.cfg.robust.enabled or not msgs:
            return [True] * len(msgs)
        r = self.cfg.robust
        verdict = median_outliers(vectors, r.k, r.spread)
        entry = {"round": rnd, "threshold": verdict.threshold,
                 "distances": {who(m): float(d) for m, d in zip(msgs, verdict.distances,
                                                                strict=True)},
                 "dropped": [who(m) for m, k in zip(msgs, verdict.keep, strict=True) if not k]}
        self.robust_log.append(entry)
        for i, msg in enumerate(msgs):
            if not verdict.keep[i]:
                self._reject(rnd, who(msg), verdict.reason(i))
        return [bool(k) for k in verdict.keep]

    def require_enough(self, rnd: int | str, msgs: list[Message]) -> None:
        """Go on only with at least ``min_clients`` valid replies; else stop the run naming
        the clients that did not count this round and why."""
        need = max(1, self.cfg.min_clients)
        if len(msgs) >= need:
            return
        got = {m.metadata.src_node_id for m in msgs}
        missing = [self.name(n) for n in self.node_ids if n not in got]
        where = f"round {rnd}" if isinstance(rnd, int) else rnd
        reasons = [r for r in self.rejected if r.startswith(f"{where},")]
        raise RuntimeError(
            f"{where}: {len(msgs)} valid replies, fewer than min_clients={need}; "
            f"missing or rejected: {', '.join(missing)}"
            + (f" ({'; '.join(reasons)})" if reasons else ""))

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
        """Rounds ``first_round..num_rounds`` of train + aggregate (+ evaluate), or, after
        :meth:`restore`, the rounds after the checkpointed one (the clients are told which
        round to restore their state from). Returns the final global state.
        ``on_round(record)`` runs after each round (results writing, checkpoint)."""
        num_rounds = self.last_round if num_rounds is None else num_rounds
        timeout = self.cfg.round_timeout if timeout is None else timeout
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        self.summary()
        self.check_data(grid, timeout)
        state = initial_arrays
        first, resumed = self.first_round, self.done_round
        if resumed is not None:
            first, state = resumed + 1, self.global_state
            log.info("resuming after round %d (checkpoint)", resumed)
        for rnd in range(first, num_rounds + 1):
            t0 = time.perf_counter()
            record: dict = {"round": rnd}
            conf = train_config
            if resumed is not None and rnd == resumed + 1:
                conf = ConfigRecord({**train_config, "resume-round": resumed})
            tx = exchange(grid, list(self.configure_train(rnd, state, conf, grid)),
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
            self.global_state, self.done_round = state, rnd
            self._log_round(record, num_rounds)
            if on_round is not None:
                on_round(record)
        return state

    # -- start-up data check (clients/check.py) --------------------------------------------------
    def check_data(self, grid: Grid, timeout: float) -> None:
        """Before any round: every client loads its data and names the files it cannot read.
        Any refusal (``dataset.on_bad=refuse``) stops the run with every client's list;
        skipped files are kept in :attr:`skipped_files`."""
        msgs = self._messages(MessageType.QUERY, RecordDict({CONFIG: ConfigRecord({})}))
        ex = exchange(grid, msgs, timeout, "start-up data check")
        self._note_missing(ex, STARTUP)
        refused, ok = [], []
        for msg in self.ok_replies(ex.replies, STARTUP, "data check "):
            files = msg.content.config_records.get(FILES, {})
            if int(msg.content[METRICS]["refused"]):
                bad = list(files.get("bad-files", []))
                refused.append(f"{who(msg)}: {len(bad)} unreadable file(s):\n    "
                               + "\n    ".join(bad[:20])
                               + (f"\n    ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
                continue
            if files.get("skipped-files"):
                self.skipped_files[who(msg)] = list(files["skipped-files"])
                log.warning("%s skips %d unreadable file(s) (dataset.on_bad=skip)", who(msg),
                            len(self.skipped_files[who(msg)]))
            ok.append(msg)
        if refused:
            raise RuntimeError("start-up data check: clients refused their data "
                               "(dataset.on_bad=refuse); fix or remove these files, or set "
                               "dataset.on_bad=skip:\n  " + "\n  ".join(refused))
        self.require_enough(STARTUP, ok)

    def _note_missing(self, ex: Exchange, rnd: int | str) -> None:
        for node in ex.missing:
            self._reject(rnd, self.name(node), "no reply (timeout)")

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
