"""A federation in one process (no Flower, no Ray) for benchmarks that need many runs.

Each client's detector fits on its partition, the server validates and merges the uploads,
every round: the same detector calls that ``clients/bank.py`` and ``server/bank.py`` make
through Flower, on the same partitions and held-out images. After every round each
client scores its validation split (held-out normals + one synthetic defect each,
:mod:`fedad.data.synthetic`); the round to keep is the one of best validation score, the
mean of validation image and pixel AUROC, averaged over clients weighted by their
validation images (earliest on ties), and only then is the
test set scored, once per client, with the state and global summary of that round.
Nothing is chosen on the test set.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from clients.data import ClientData, load_client_data
from fedad.config import RunConfig
from fedad.detectors.base import FeatureShape, summary_nbytes
from fedad.detectors.registry import client_seed, create, feature_config, rounds
from fedad.metrics import evaluate
from fedad.shared_scores import score_shared

log = logging.getLogger("fedad")


def _validation(clients, data: list[ClientData], summary, size: int) -> list[dict]:
    """Validation metrics of each client that holds a validation split (a client with very
    few images may hold none out): image and pixel AUROC and their mean, the score that
    choices are made on (synthetic defects are often found by every variant, so image
    AUROC alone saturates at 1.0 and cannot choose)."""
    out = []
    for c, d in zip(clients, data, strict=True):
        if d.validation is None:
            continue
        s = c.score(d.validation.features, summary, size)
        m = evaluate(s.image, d.validation.labels, s.maps, d.validation.masks)
        out.append({"i_auroc": m["i_auroc"], "p_auroc": m["p_auroc"],
                    "score": (m["i_auroc"] + m["p_auroc"]) / 2, "images": len(d.validation)})
    return out


def _weighted(val: list[dict], key: str) -> float:
    """Mean over clients weighted by their validation images (a client holding out two
    images should not count as much as one holding out forty)."""
    return float(np.average([v[key] for v in val], weights=[v["images"] for v in val]))


def _test(clients, data: list[ClientData], summary, size: int, pixels: bool,
          cfg: RunConfig) -> dict:
    per = []
    for c, d in zip(clients, data, strict=True):
        s, memo = score_shared(c, cfg, d.test, summary, size)  # stateless: once for all
        if "metrics" not in memo:
            memo["metrics"] = evaluate(s.image, d.test.labels, s.maps if pixels else None,
                                       d.test.masks if pixels else None)
        per.append(memo["metrics"])
    out = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    out["i_auroc_std"] = float(np.std([p["i_auroc"] for p in per]))
    out["per_client_i_auroc"] = [p["i_auroc"] for p in per]
    return out


def run_in_process(cfg: RunConfig, pixels: bool = True, also_last: bool = True) -> dict:
    """One federated run; returns per-round losses and validation I-AUROC, the chosen
    round, its test metrics (and the last round's when it differs and ``also_last``)."""
    cfg = feature_config(cfg)
    n = cfg.num_clients
    t0 = time.perf_counter()
    data = [load_client_data(cfg, i, n) for i in range(n)]
    held = [len(d.validation) // 2 if d.validation is not None else 0 for d in data]
    if not any(held):
        raise ValueError("no client holds a validation split (calibration.holdout > 0)")
    log.info("validation split: %s held-out normals per client (+ as many synthetic "
             "anomalies)", held)
    seconds = {"features": time.perf_counter() - t0, "fit": 0.0, "merge": 0.0,
               "validation": 0.0, "scoring": 0.0}
    shape = FeatureShape(*data[0].train.features.shape[1:])
    server = create(cfg, shape, "cpu", cfg.train.seed)
    clients = [create(cfg, shape, "cpu", client_seed(cfg, i)) for i in range(n)]
    first, last = rounds(cfg, clients[0])
    size = cfg.dataset.image_size
    history, summary, best = [], None, None
    upload = 0
    for r in range(first, last + 1):
        t = time.perf_counter()
        ups, losses = [], []
        for i, (c, d) in enumerate(zip(clients, data, strict=True)):
            losses.append(c.fit(d.train.features, summary, r).loss)
            ups.append(server.validate(c.summarize(r), f"client {i}"))
        upload = max(summary_nbytes(u) for u in ups)
        seconds["fit"] += time.perf_counter() - t
        t = time.perf_counter()
        summary = server.merge(ups, r)
        seconds["merge"] += time.perf_counter() - t
        t = time.perf_counter()
        val = _validation(clients, data, summary, size)
        seconds["validation"] += time.perf_counter() - t
        rec = {"round": r, "loss": float(np.mean(losses)),
               **{f"val_{k}": _weighted(val, k) for k in ("i_auroc", "p_auroc", "score")},
               "val_per_client": val}
        history.append(rec)
        log.info("round %d/%d: loss %.4f, validation I-AUROC %.4f, P-AUROC %.4f", r, last,
                 rec["loss"], rec["val_i_auroc"], rec["val_p_auroc"])
        if best is None or rec["val_score"] > best[0]:
            best = (rec["val_score"], r, [copy.deepcopy(c.state()) for c in clients],
                    summary)
    t = time.perf_counter()
    result = {"last_round": last, "chosen_round": best[1], "history": history,
              "validation_normals": held,
              "upload_bytes_per_client": upload}
    if best[1] == last:
        result["test"] = result["test_last_round"] = _test(clients, data, summary, size,
                                                           pixels, cfg)
    else:
        result["test_last_round"] = (_test(clients, data, summary, size, pixels, cfg)
                                     if also_last else None)
        for c, state in zip(clients, best[2], strict=True):
            c.load_state(state)
        result["test"] = _test(clients, data, best[3], size, pixels, cfg)
    seconds["scoring"] = time.perf_counter() - t
    seconds["wall"] = time.perf_counter() - t0
    result["seconds"] = seconds
    return result
