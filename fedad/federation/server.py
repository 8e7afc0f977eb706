"""What the server does, for every detector x exchange (no Flower here): the round loop
over a :class:`Transport` (Flower's grid in ``server/``, or sites in this process), the
checks of every reply and the exchange's aggregation.

Each round: send every site its payload (the exchange's; a personalised exchange sends
each its own), collect the replies, leave out errors, timeouts and uploads the exchange's
``validate`` refuses (each logged, named and recorded), and with ``robust.enabled`` the
outliers among the valid uploads' descriptors (:mod:`fedad.federation.robust`); go on when at least
``min_clients`` remain (else stop naming the missing ones), aggregate, and every
``eval_every`` rounds (always the last) ask the sites to score. Before round 1 each site
checks its data (start-up data check).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedad.config.schema import RunConfig
from fedad.detectors.capabilities import Budgeted
from fedad.detectors.registry import (
    create,
    evaluated,
    exchange_for,
    feature_shape,
    label,
    resolve,
    schedule,
)
from fedad.errors import BankError
from fedad.evaluation.chance import validation_signal
from fedad.exchanges.base import Upload
from fedad.federation.participation import participants
from fedad.federation.payload import NOTE, NUM_EXAMPLES
from fedad.federation.records import EVALUATE, QUERY, Envelope, Reply, nbytes
from fedad.federation.robust import median_outliers
from fedad.federation.uploads import uploads_for
from fedad.privacy.accountant import calibrated
from fedad.privacy.secure_sum import decode, error_bound
from fedad.refinements.registry import metric_keys

log = logging.getLogger("fedad")
# test metrics, then validation metrics (held-out normals + synthetic defects; sites with
# too few images hold none out and do not report them)
# (a refinement adds its own: fedad.refinements.metric_keys)
EVAL_KEYS = ("i_auroc", "p_auroc", "pro", "i_f1_max", "p_f1_max", "val_i_auroc",
             "val_p_auroc", "val_loss")
SITE_KEYS = ("threshold", "val-images")  # per site, not averaged
STARTUP = "start-up"  # what rejections before round 1 are filed under
TRAIN_SECONDS = ("seconds-features", "seconds-train", "seconds-reduce")


@dataclass
class Delivery:
    """One send-and-collect: replies in site order (then key) and what it cost."""

    replies: list[Reply] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # keys that did not answer in time
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    # secure aggregation: the sum of the replying sites' encoded terms (SecAgg+ unmasked it;
    # ``replies`` then carry metrics only) and what the protocol reports
    sums: dict[str, np.ndarray] | None = None
    secure: dict = field(default_factory=dict)


class Transport(Protocol):
    """How envelopes reach sites and replies come back; ``secure_sum`` sends train
    messages whose replies the server receives only as the sum of the sites' encoded
    terms ``names`` (a :class:`Delivery` with ``sums``; a transport that cannot raises
    :class:`~fedad.errors.ConfigError` saying where it runs)."""

    def send(self, kind: str, envelopes: dict[int, Envelope], timeout: float,
             desc: str) -> Delivery: ...

    def secure_sum(self, envelopes: dict[int, Envelope], timeout: float, desc: str,
                   names: list[str], levels: int) -> Delivery: ...


def site_order(reply: Reply) -> tuple[float, int]:
    """Replies sorted by the site they name, then by key: simulated node ids are drawn anew
    every run, so ordering by them would feed the same uploads to aggregation (K-means
    initialisation, float sums) in a different order from one run to the next."""
    return (float("inf") if reply.site is None else float(reply.site)), reply.key


def mean_std(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {}


def short_reason(reason: str, limit: int = 300) -> str:
    """The gist of an error reply: the site's exception message without the Ray and Flower
    tracebacks around it (simulation wraps it as ``... Message: <text>'>``)."""
    text = reason.rsplit("Message:", 1)[-1] if "Message:" in reason else reason
    lines = [ln.strip() for ln in text.strip().strip("'>").splitlines() if ln.strip()]
    text = lines[-1] if lines else reason.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Server:
    """The server of one run: exchange, bookkeeping and the round loop."""

    def __init__(self, cfg: RunConfig, keys: Sequence[int]) -> None:
        self.cfg = resolve(cfg)
        self.keys = list(keys)
        self.detector = create(cfg, feature_shape(cfg), "cpu", seed=cfg.train.seed)
        self.exchange = exchange_for(cfg, self.detector)
        self.uploads = uploads_for(self.cfg)  # as sent, or a secure sum (secure.enabled)
        averaged, per_site = metric_keys(self.cfg)  # the run's refinement adds its own
        self.averaged_keys, self.site_keys = (*EVAL_KEYS, *averaged), (*SITE_KEYS, *per_site)
        self.first_round, self.last_round = self.exchange.rounds()
        self.history: list[dict] = []
        self.rejected: list[str] = []  # "round r, client ...: reason", in order
        self.rejected_per_client: dict[str, int] = {}
        self.robust_log: list[dict] = []  # per round: distances, threshold, dropped
        self.skipped_files: dict[str, list[str]] = {}  # client -> files it left out
        self.partition_of: dict[int, int] = {}  # key -> site, from replies seen
        self.notes: list[str] = []  # said in the log and kept in rounds.json
        self.received_keys: list[str] = []  # array names of the last accepted upload
        self.done_round: int | None = None
        self.last_aggregate_seconds = 0.0

    # -- checkpoint --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What a resumed run needs of the server."""
        return {"round": self.done_round, "history": self.history, "rejected": self.rejected,
                "rejected_per_client": self.rejected_per_client,
                "robust_log": self.robust_log, "partition_of": self.partition_of,
                "notes": self.notes, "received_keys": self.received_keys,
                "exchange": self.exchange.state()}

    def restore(self, ckpt: dict) -> None:
        """Take back what :meth:`checkpoint_state` saved."""
        self.done_round = int(ckpt["round"])
        self.history, self.rejected = list(ckpt["history"]), list(ckpt["rejected"])
        self.rejected_per_client = dict(ckpt["rejected_per_client"])
        self.robust_log, self.notes = list(ckpt["robust_log"]), list(ckpt["notes"])
        self.partition_of = dict(ckpt["partition_of"])
        self.received_keys = list(ckpt["received_keys"])
        self.exchange.load_state(ckpt["exchange"])

    def extras(self) -> dict:
        """What rounds.json keeps beside the history."""
        return {"rejected": self.rejected, "rejected_per_client": self.rejected_per_client,
                "robust": self.robust_log, "skipped_files": self.skipped_files,
                "notes": self.notes, "exchange": self.cfg.exchange,
                "detector": self.cfg.detector, "label": label(self.cfg),
                "received_keys": [self.received_keys] if self.received_keys else []}

    # -- bookkeeping -------------------------------------------------------------------------
    def name(self, key: int) -> str:
        """``client node <key>`` with its partition once a reply has named it."""
        pid = self.partition_of.get(key)
        return f"client node {key}" + (f" (partition {pid})" if pid is not None else "")

    def reject(self, rnd: int | str, client: str, reason: str) -> None:
        """Leave a reply out, saying which round, which client and why."""
        why = f"{f'round {rnd}' if isinstance(rnd, int) else rnd}, {client}: {reason}"
        log.warning("left out of aggregation: %s", why)
        self.rejected.append(why)
        self.rejected_per_client[client] = self.rejected_per_client.get(client, 0) + 1

    def ok_replies(self, delivery: Delivery, rnd: int | str, what: str = "") -> list[Reply]:
        """Replies without error; errors and timeouts are logged and recorded."""
        for key in delivery.missing:
            self.reject(rnd, self.name(key), "no reply (timeout)")
        out = []
        for reply in delivery.replies:
            if reply.site is not None:
                self.partition_of[reply.key] = reply.site
            if reply.error is not None:
                self.reject(rnd, self.name(reply.key),
                            f"{what}error reply: {short_reason(reply.error)}")
            else:
                out.append(reply)
        return out

    def robust_keep(self, rnd: int, replies: list[Reply], vectors: list) -> list[bool]:
        """Which uploads robust aggregation keeps (all when ``robust.enabled`` is off)."""
        if not self.cfg.robust.enabled or not replies:
            return [True] * len(replies)
        r = self.cfg.robust
        verdict = median_outliers(vectors, r.k, r.spread)
        self.robust_log.append({
            "round": rnd, "threshold": verdict.threshold,
            "distances": {m.who: float(d) for m, d in zip(replies, verdict.distances,
                                                          strict=True)},
            "dropped": [m.who for m, k in zip(replies, verdict.keep, strict=True) if not k]})
        for i, reply in enumerate(replies):
            if not verdict.keep[i]:
                self.reject(rnd, reply.who, verdict.reason(i))
        return [bool(k) for k in verdict.keep]

    def require_enough(self, rnd: int | str, replies: list[Reply]) -> None:
        """Go on only with at least ``min_clients`` valid replies; else stop the run naming
        the clients that did not count this round and why."""
        need = max(1, self.cfg.min_clients)
        if len(replies) >= need:
            return
        got = {m.key for m in replies}
        missing = [self.name(k) for k in self.keys if k not in got]
        where = f"round {rnd}" if isinstance(rnd, int) else rnd
        reasons = [r for r in self.rejected if r.startswith(f"{where},")]
        raise RuntimeError(
            f"{where}: {len(replies)} valid replies, fewer than min_clients={need}; "
            f"missing or rejected: {', '.join(missing)}"
            + (f" ({'; '.join(reasons)})" if reasons else ""))

    # -- a round -----------------------------------------------------------------------------
    def train_envelopes(self, rnd: int, config: dict) -> dict[int, Envelope]:
        """What the round's participants receive (every site unless
        ``train.participation < 1``)."""
        conf = {**config, "round": rnd}
        who = participants(self.keys, self.cfg.train.participation, self.cfg.train.seed, rnd,
                           self.cfg.min_clients)
        return {k: Envelope(self.exchange.payload(k, rnd), conf) for k in who}

    def accept(self, rnd: int, delivery: Delivery) -> dict:
        """Validate, screen and aggregate a round's uploads; the round's train record."""
        valid: list[tuple[Reply, dict]] = []
        for reply in self.ok_replies(delivery, rnd):
            try:
                valid.append((reply, self.exchange.validate(reply.records, reply.who, rnd)))
            except (BankError, KeyError, ValueError, TypeError) as exc:
                self.reject(rnd, reply.who, str(exc).removeprefix(f"{reply.who}: "))
        replies = [r for r, _ in valid]
        keep = self.robust_keep(rnd, replies, [self.exchange.descriptor(u) for _, u in valid]
                                if self.cfg.robust.enabled else [])
        valid = [v for v, k in zip(valid, keep, strict=True) if k]
        replies = [r for r, _ in valid]
        self.require_enough(rnd, replies)
        if valid and valid[-1][1]:
            self.received_keys = sorted(next(iter(valid[-1][1].values())).keys())
        t = time.perf_counter()
        self.exchange.aggregate([Upload(r.key, r.site if r.site is not None else -1, u,
                                        int(r.metrics.get(NUM_EXAMPLES, 1)))
                                 for r, u in valid], rnd)
        self.last_aggregate_seconds = time.perf_counter() - t
        metrics = [r.metrics for r in replies]
        stages = list(TRAIN_SECONDS) + sorted({k for m in metrics for k in m
                                               if k.startswith("seconds-")} - set(TRAIN_SECONDS))
        notes = {str(m.get("partition-id", r.key)): {k[len(NOTE):]: float(v)
                                                     for k, v in m.items() if k.startswith(NOTE)}
                 for r, m in zip(replies, metrics, strict=True)}
        record = {"clients": len(replies),
                  "loss": mean_std(float(m.get("loss", 0.0)) for m in metrics),
                  "seconds-client": {k: max(float(m.get(k, 0.0)) for m in metrics)
                                     for k in stages},
                  "seconds-client-sum": {k: sum(float(m.get(k, 0.0)) for m in metrics)
                                         for k in stages},
                  "seconds-aggregate": self.last_aggregate_seconds}
        if any(notes.values()):
            record["site-notes"] = {k: v for k, v in notes.items() if v}
        return record

    def accept_sum(self, rnd: int, delivery: Delivery) -> dict:
        """``secure.enabled``: the round's train record from the sum SecAgg+ unmasked;
        the sites that dropped out are named, the sum decoded and handed to the exchange
        (whose result is checked as an upload would be)."""
        replies = self.ok_replies(delivery, rnd)
        why = ("dropped out of secure aggregation" if delivery.sums is not None else
               "secure aggregation halted: too few sites stayed to remove the masks "
               f"(secure.threshold={self.cfg.secure.threshold:g})")
        for key in delivery.secure.get("dropped", []):
            self.reject(rnd, self.name(key), why)
        if delivery.sums is None:
            replies = []
        self.require_enough(rnd, replies)
        scales = self.exchange.sum_scales(rnd)
        sums = decode(delivery.sums, scales, self.cfg.secure.clipping_range)
        t = time.perf_counter()
        try:
            self.exchange.aggregate_sums(sums, len(replies), rnd)
        except (BankError, ValueError) as exc:
            raise RuntimeError(f"round {rnd}: the secure sum of {len(replies)} sites fails "
                               f"the server's checks ({exc}); some site's terms are wrong "
                               "and secure aggregation cannot say whose") from exc
        self.last_aggregate_seconds = time.perf_counter() - t
        self.received_keys = list(scales)
        metrics = [r.metrics for r in replies]
        levels = int(delivery.secure["levels"])
        return {"clients": len(replies),
                "loss": mean_std(float(m.get("loss", 0.0)) for m in metrics),
                "secure": {**delivery.secure, "sites": sorted(self.name(r.key)
                                                              for r in replies),
                           "error_bound": error_bound(scales, len(replies), levels),
                           "clipped": sum(int(m.get(NOTE + "secure-clipped", 0))
                                          for m in metrics)},
                "seconds-client": {k: max(float(m.get(k, 0.0)) for m in metrics)
                                   for k in TRAIN_SECONDS},
                "seconds-aggregate": self.last_aggregate_seconds}

    def evaluation(self, rnd: int, delivery: Delivery) -> dict | None:
        """Mean and spread over sites of their metrics (and each site's)."""
        per_client: dict[int, dict[str, float]] = {}
        seconds, seconds_features = [], []
        for reply in self.ok_replies(delivery, rnd, "evaluation "):
            m = reply.metrics
            per_client[int(m["partition-id"])] = {
                k: float(m[k]) for k in (*self.averaged_keys, *self.site_keys) if k in m}
            seconds.append(float(m["seconds-eval"]))
            seconds_features.append(float(m["seconds-features"]))
        if not per_client:
            return None
        keys = [k for k in self.averaged_keys
                if any(k in v for v in per_client.values())]
        out = {"per_client": {str(p): per_client[p] for p in sorted(per_client)},
               **{k: mean_std(v[k] for v in per_client.values() if k in v) for k in keys},
               "seconds-client": {"seconds-eval": max(seconds)},
               "seconds-client-sum": {"seconds-eval": sum(seconds),
                                      "seconds-features": sum(seconds_features)}}
        signal = validation_signal(out["per_client"])
        if signal is not None:  # whether the validation split can rank anything
            out["validation"] = signal.as_dict()
        return out

    # -- the loop ----------------------------------------------------------------------------
    def announce(self) -> None:
        if (not self.detector.iterative and self.cfg.train.rounds != 1
                and self.last_round == 1 and not self.notes):
            self.notes.append(f"{self.detector.name} works on frozen features: one round "
                              "gives its final result, so it runs 1 round (train.rounds="
                              f"{self.cfg.train.rounds} is ignored)")
            log.info(self.notes[-1])
        pv = self.cfg.privacy
        if pv.epsilon > 0:
            b = calibrated(pv, self.detector.private_releases(self.cfg))
            note = (f"differential privacy: each site's uploads over the whole run are "
                    f"({b.epsilon:.4g}, {b.delta:g})-DP with one image as the unit (noise "
                    f"multiplier {b.noise_multiplier:.4g}, {b.releases} Gaussian release(s), "
                    f"clip {pv.clip:g})")
            if note not in self.notes:
                self.notes.append(note)
                log.info(note)
        sc = self.cfg.secure
        if sc.enabled:
            note = (f"secure aggregation: Flower's SecAgg+ sums the sites' uploads, the server "
                    f"sees only the sum (public bounds: {sc.max_images} images per site, "
                    f"|value| <= {sc.bound:g})")
            if note not in self.notes:
                self.notes.append(note)
                log.info(note)
        log.info("%s: %d clients, %s, rounds %d..%d", label(self.cfg), len(self.keys),
                 schedule(self.cfg), self.first_round, self.last_round)

    def run(self, transport: Transport, config: dict | None = None,
            on_round: Callable[[dict], None] | None = None) -> None:
        """The start-up data check, then rounds ``first..last`` (after :meth:`restore`:
        the rounds after the checkpointed one; the sites are told which round to restore
        their state from). ``config`` goes to every site (e.g. ``out``: the run folder);
        ``on_round(record)`` runs after each round (results, checkpoint)."""
        config = dict(config or {})
        timeout = self.cfg.round_timeout
        self.announce()
        self.check_data(transport, timeout)
        first, resumed = self.first_round, self.done_round
        if resumed is None:
            self.exchange.start()
        else:
            first = resumed + 1
            log.info("resuming after round %d (checkpoint)", resumed)
        last = self.last_round
        for rnd in range(first, last + 1):
            t0 = time.perf_counter()
            conf = dict(config)
            if resumed is not None and rnd == resumed + 1:
                conf["resume-round"] = resumed
            envelopes = self.train_envelopes(rnd, conf)
            desc = f"round {rnd}/{last} train"
            tx = self.uploads.deliver(self, transport, envelopes, timeout, desc, rnd)
            record: dict = {"round": rnd, "train": self.uploads.accept(self, rnd, tx)}
            if isinstance(self.detector, Budgeted):  # the phase and its steps (the losses
                rp = self.detector.round_plan(rnd)  # per phase read from the rounds)
                record["train"]["phase"] = {"name": rp.phase, "first_step": rp.first,
                                            "steps": rp.steps, "of": rp.total}
            if len(envelopes) < len(self.keys):  # partial participation: who was asked
                record["train"]["participants"] = [self.name(k) for k in sorted(envelopes)]
            record["bytes"] = {"sent": tx.bytes_sent, "received": tx.bytes_received,
                               "received_per_client": tx.bytes_received
                               / max(1, len(tx.replies))}
            record["seconds"] = {"train_exchange": tx.seconds,
                                 "aggregate": self.last_aggregate_seconds}
            ev = None
            if rnd > 0 and evaluated(rnd, last, self.cfg.eval_every):
                conf = {**config, "round": rnd, "final": rnd == last}
                ex = transport.send(EVALUATE, {k: Envelope(self.exchange.evaluation_payload(k),
                                                           conf) for k in self.keys},
                                    timeout, f"round {rnd}/{last} evaluate")
                ev = self.evaluation(rnd, ex)
                record["bytes"]["sent"] += ex.bytes_sent
                record["seconds"]["evaluate_exchange"] = ex.seconds
            record["evaluate"] = ev
            record["seconds"]["round"] = time.perf_counter() - t0
            self.history.append(record)
            self.done_round = rnd
            self.log_round(record, last)
            if on_round is not None:
                on_round(record)

    def check_data(self, transport: Transport, timeout: float) -> None:
        """Before any round: every site loads its data and names the files it cannot read.
        Any refusal (``dataset.on_bad=refuse``) stops the run with every site's list;
        skipped files are kept in :attr:`skipped_files`."""
        ex = transport.send(QUERY, {k: Envelope() for k in self.keys}, timeout,
                            "start-up data check")
        refused, ok = [], []
        for reply in self.ok_replies(ex, STARTUP, "data check "):
            if int(reply.metrics["refused"]):
                bad = list(reply.lists.get("bad-files", []))
                refused.append(f"{reply.who}: {len(bad)} unreadable file(s):\n    "
                               + "\n    ".join(bad[:20])
                               + (f"\n    ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
                continue
            if reply.lists.get("skipped-files"):
                self.skipped_files[reply.who] = list(reply.lists["skipped-files"])
                log.warning("%s skips %d unreadable file(s) (dataset.on_bad=skip)", reply.who,
                            len(self.skipped_files[reply.who]))
            ok.append(reply)
        if refused:
            raise RuntimeError("start-up data check: clients refused their data "
                               "(dataset.on_bad=refuse); fix or remove these files, or set "
                               "dataset.on_bad=skip:\n  " + "\n  ".join(refused))
        self.require_enough(STARTUP, ok)

    def log_round(self, record: dict, last: int) -> None:
        tr = record["train"]
        parts = [f"[round {record['round']}/{last}] {tr['clients']} clients",
                 f"up {record['bytes']['received_per_client'] / 1e6:.2f} MB/client",
                 f"aggregate {record['seconds']['aggregate']:.1f}s"]
        if tr.get("loss") and record["round"] > 0:
            phase = f" ({tr['phase']['name']})" if "phase" in tr else ""
            parts.append(f"loss{phase} {tr['loss']['mean']:.4f}")
        ev = record.get("evaluate")
        if ev:
            for k in ("i_auroc", "p_auroc", "pro"):
                if k in ev and not math.isnan(ev[k]["mean"]):
                    parts.append(f"{k} {ev[k]['mean']:.4f}±{ev[k]['std']:.4f}")
            signal = validation_signal(ev["per_client"])
            if signal is not None:  # the validation split (held-out normals + defects)
                parts.append(signal.describe())
        parts.append(f"{record['seconds']['round']:.1f}s")
        log.info(" | ".join(parts))


def delivered(replies: list[Reply], missing: list[int], sent: dict[int, Envelope],
              seconds: float) -> Delivery:
    """A :class:`Delivery` with replies in site order and bytes counted."""
    return Delivery(replies=sorted(replies, key=site_order), missing=sorted(missing),
                    bytes_sent=sum(nbytes(e.records) for e in sent.values()),
                    bytes_received=sum(nbytes(r.records) for r in replies), seconds=seconds)
