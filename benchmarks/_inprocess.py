"""A federation in one process (no Flower, no Ray) for benchmarks that need many runs, on
the same engine as a Flower run (:mod:`fedad.federation`: the same sites, messages, checks
and aggregation; :class:`~fedad.federation.in_process.InProcess` carries the messages).

After every round each site scores only its validation split (held-out normals + one
synthetic defect each, :mod:`fedad.data.synthetic`); the round to keep is the one of best
validation score, the mean of validation image and pixel AUROC, averaged over sites weighted
by their validation images (earliest on ties), and only then is the test set scored, once
per site, with the site states and global state of that round. Nothing is chosen on the
test set.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np

from fedad.config.schema import RunConfig
from fedad.detectors.registry import resolve
from fedad.federation.in_process import InProcess, evaluate_round, keep_round, restore_round
from fedad.federation.server import Server
from partitions import partition_nodes

log = logging.getLogger("fedad")


def _validation(per_client: dict) -> dict:
    """Weighted validation scores over the sites that hold a validation split (a site
    holding out two images should not count as much as one holding out forty): image and
    pixel AUROC and their mean, the score choices are made on (synthetic defects are often
    found by every variant, so image AUROC alone saturates at 1.0 and cannot choose), and
    the held-out objective ``val_loss`` where the detector reports one."""
    val = [v for v in per_client.values() if "val_i_auroc" in v]
    w = [v["val-images"] for v in val]
    i = float(np.average([v["val_i_auroc"] for v in val], weights=w))
    p = float(np.average([v["val_p_auroc"] for v in val], weights=w))
    per = [{"i_auroc": v["val_i_auroc"], "p_auroc": v["val_p_auroc"],
            "score": (v["val_i_auroc"] + v["val_p_auroc"]) / 2, "images": v["val-images"]}
           for v in val]
    out = {"val_i_auroc": i, "val_p_auroc": p,
           "val_score": float(np.average([v["score"] for v in per], weights=w)),
           "val_per_client": per}
    if all("val_loss" in v for v in val):  # a detector with a held-out objective
        out["val_loss"] = float(np.average([v["val_loss"] for v in val], weights=w))
    return out


def _test(server: Server, transport: InProcess, rnd: int) -> dict:
    ev = evaluate_round(server, transport, rnd, desc="test")
    per = list(ev["per_client"].values())
    keys = [k for k in ("i_auroc", "i_f1_max", "p_auroc", "pro", "p_f1_max") if k in per[0]]
    out = {k: float(np.mean([p[k] for p in per])) for k in keys}
    out["i_auroc_std"] = float(np.std([p["i_auroc"] for p in per]))
    out["per_client_i_auroc"] = [p["i_auroc"] for p in per]
    return out


def _federation(cfg: RunConfig) -> tuple[InProcess, Server]:
    """The in-process transport and the server of ``cfg`` (resolved, evaluated after every
    round, no example plots)."""
    cfg = resolve(copy.deepcopy(cfg))
    cfg.eval_every, cfg.examples = 1, 0
    transport = InProcess(cfg, partition_nodes(cfg))
    return transport, Server(cfg, transport.keys)


def run_in_process(cfg: RunConfig, pixels: bool = True, also_last: bool = True,
                   measure: Callable[[Server, InProcess, int], dict] | None = None) -> dict:
    """One federated run; returns per-round losses and validation scores (round 0, the
    untrained start, included), the chosen round, its test metrics (and the last round's
    when it differs and ``also_last``). ``measure(server, transport, round)``, when given,
    adds to each round's record what a study reads from the states the sites hold (e.g.
    ``feddymem_head.py``'s collapse measures). ``pixels`` is kept for callers: pixel
    metrics are reported when the data has masks."""
    t0 = time.perf_counter()
    transport, server = _federation(cfg)
    history, best = [], None

    def on_round(record: dict) -> None:
        nonlocal best
        ev = record["evaluate"]
        if ev is None:  # round 0 (e.g. FedDyMem's first bank): the loop does not evaluate it
            ev = evaluate_round(server, transport, record["round"], {"test": False})
        if ev is None or not any("val_i_auroc" in v for v in ev["per_client"].values()):
            raise ValueError("no client holds a validation split (calibration.holdout > 0)")
        rec = {"round": record["round"], "loss": record["train"]["loss"].get("mean", 0.0),
               **_validation(ev["per_client"])}
        if measure is not None:
            rec["measures"] = measure(server, transport, record["round"])
        history.append(rec)
        log.info("round %d/%d: loss %.4f, validation I-AUROC %.4f, P-AUROC %.4f",
                 rec["round"], server.last_round, rec["loss"], rec["val_i_auroc"],
                 rec["val_p_auroc"])
        if best is None or rec["val_score"] > best[0]:
            best = (rec["val_score"], keep_round(server, transport, rec["round"]))

    server.run(transport, {"test": False}, on_round)
    last = server.last_round
    t = time.perf_counter()
    result = {"last_round": last, "chosen_round": best[1].round, "history": history,
              "validation_normals": [v["images"] // 2 for v in history[-1]["val_per_client"]],
              "upload_bytes_per_client": int(max(r["bytes"]["received_per_client"]
                                                 for r in server.history))}
    if best[1].round == last:
        result["test"] = result["test_last_round"] = _test(server, transport, last)
    else:
        result["test_last_round"] = _test(server, transport, last) if also_last else None
        restore_round(server, transport, best[1])
        result["test"] = _test(server, transport, best[1].round)
    trains = [r["train"] for r in server.history]
    result["seconds"] = {
        "features": max(t["seconds-client-sum"]["seconds-features"] for t in trains[:1]),
        "fit": sum(t["seconds-client-sum"]["seconds-train"]
                   + t["seconds-client-sum"]["seconds-reduce"] for t in trains),
        "merge": sum(t["seconds-aggregate"] for t in trains),
        "validation": sum(r["seconds"].get("evaluate_exchange", 0.0) for r in server.history),
        "scoring": time.perf_counter() - t, "wall": time.perf_counter() - t0}
    return result


def run_scoring_every_round(cfg: RunConfig) -> list[dict]:
    """One federated run that scores the validation split *and* the test set after every
    round, for studies of how the two agree (``validation_signal.py``); nothing is chosen
    in it. Per round: the loss, the validation scores (:func:`_validation`) and the test
    means over sites."""
    transport, server = _federation(cfg)
    rounds: list[dict] = []

    def on_round(record: dict) -> None:
        ev = record["evaluate"]
        if ev is None:  # a round the schedule does not evaluate (round 0)
            return
        per = list(ev["per_client"].values())
        test = {k: float(np.mean([p[k] for p in per])) for k in ("i_auroc", "p_auroc", "pro")
                if k in per[0] and not any(np.isnan(p[k]) for p in per)}
        rounds.append({"round": record["round"], **_validation(ev["per_client"]),
                       "validation": ev.get("validation"), "test": test})
        log.info("round %d/%d: validation %.4f, test I-AUROC %.4f", record["round"],
                 server.last_round, rounds[-1]["val_score"], test["i_auroc"])

    server.run(transport, {"test": True}, on_round)
    return rounds


def validation_only(cfg: RunConfig) -> dict:
    """One federated run scored on the validation split alone, after its last round (no
    test image is scored): the weighted validation scores (:func:`_validation`), the
    per-round training losses and the seconds it took. What a choice made before any test
    number is seen runs on."""
    t0 = time.perf_counter()
    cfg = resolve(copy.deepcopy(cfg))
    cfg.eval_every, cfg.examples = 10**9, 0
    transport = InProcess(cfg, partition_nodes(cfg))
    server = Server(cfg, transport.keys)
    out: dict = {}

    def on_round(record: dict) -> None:
        ev = record["evaluate"]
        if ev is not None:
            out.update(_validation(ev["per_client"]))

    server.run(transport, {"test": False}, on_round)
    if not out:
        raise ValueError("no client holds a validation split (calibration.holdout > 0)")
    return {**out, "losses": [r["train"]["loss"]["mean"] for r in server.history],
            "seconds": time.perf_counter() - t0}

