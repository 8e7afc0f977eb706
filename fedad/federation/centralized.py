"""The centralized job: one site holding all training data, no Flower. It runs any detector
x exchange through the same engine as a federated run (:mod:`fedad.federation`) with one
site: the same site-data preparation, the same fit / upload / validate / aggregate rounds
(FedDyMem: the round-0 bank of Alg. 4, then ``train.rounds`` rounds of training,
memory-reduce and the trivial K-means; frozen-feature detectors: one round), and the test
set scored once, after the last round. Nothing is chosen on the test set. This is the
quality reference for every federated run.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fedad.config.schema import RunConfig
from fedad.detectors.base import summary_nbytes
from fedad.detectors.registry import feature_config, label, resolve
from fedad.federation.in_process import InProcess
from fedad.federation.run import federate
from fedad.federation.site_data import extractor_for, load_client_data

log = logging.getLogger("fedad")


def centralized_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` as one site with all the training data, evaluated after the last round."""
    cfg = resolve(copy.deepcopy(cfg))
    cfg.num_clients, cfg.min_clients, cfg.eval_every = 1, 1, 10**9
    return cfg


def run_centralized(cfg: RunConfig, out: str | Path | None = None) -> dict:
    """Fit, aggregate, score the test set; return metrics, timings and sizes. With ``out``
    the run folder is kept there (config, rounds, the site for ``fedad-predict``)."""
    cfg = centralized_config(cfg)
    if out is None:
        cfg.examples = 0
    t0 = time.perf_counter()
    transport = InProcess(cfg)
    with tempfile.TemporaryDirectory(prefix="fedad-centralized-") as tmp:
        server = federate(cfg, transport, transport.keys, Path(out or tmp))
    data = load_client_data(feature_config(cfg), 0, 1)  # cached by the run
    final = server.history[-1]["evaluate"]["per_client"]["0"]
    trains = [r["train"] for r in server.history]
    seconds = {"features": trains[0]["seconds-client"]["seconds-features"],
               "fit": sum(t["seconds-client"]["seconds-train"]
                          + t["seconds-client"]["seconds-reduce"] for t in trains),
               "merge": sum(t["seconds-aggregate"] for t in trains),
               "scoring": server.history[-1]["seconds"].get("evaluate_exchange", 0.0),
               "total": time.perf_counter() - t0}
    summary = server.exchange.global_summary() or {}
    return {
        **{k: v for k, v in final.items() if k not in ("threshold", "val-images")},
        "detector": label(cfg),
        "seconds": seconds,
        "summary_shapes": {k: list(v.shape) for k, v in summary.items()},
        "summary_bytes": summary_nbytes(summary),
        "upload_bytes": int(server.history[-1]["bytes"]["received_per_client"]),
        "threshold": final.get("threshold"),
        "train_images": len(data.train),
        "holdout_images": 0 if data.holdout is None else len(data.holdout),
        "test_images": len(data.test),
        "losses": [t["loss"]["mean"] for r, t in zip(server.history, trains, strict=True)
                   if r["round"] > 0 and server.detector.iterative],
        "backbone": extractor_for(feature_config(cfg))[1],
        "config": asdict(cfg),
    }
