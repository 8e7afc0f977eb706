"""The centralized job: one process, one "client" holding all training data, no Flower.

It runs any registered detector through the same contract as a federated run
(:mod:`fedad.detectors.base`) with N = 1: ``fit``, ``summarize``, ``validate`` and
``merge`` each round (FedDyMem: the round-0 bank of Alg. 4, then ``train.rounds`` rounds of
training, memory-reduce and the trivial K-means; frozen-feature detectors: one round), then
the test set is scored once, after the last round. Nothing is chosen on the test set. This
is the quality reference for every federated run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from fedad.config import RunConfig
from fedad.data.factory import build_dataset
from fedad.data.holdout import holdout_split
from fedad.detectors.base import FeatureShape, summary_nbytes
from fedad.detectors.registry import client_seed, create, feature_config, label, rounds
from fedad.device import resolve_device
from fedad.feature_cache import dataset_features
from fedad.features import build_feature_extractor
from fedad.metrics import evaluate
from fedad.site import calibrate

log = logging.getLogger("fedad")


def run_centralized(cfg: RunConfig) -> dict:
    """Fit, merge, score the test set; return metrics, timings and sizes."""
    cfg = feature_config(cfg)
    seconds: dict[str, float] = {}
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    extractor, info = build_feature_extractor(cfg.backbone)
    train_set = build_dataset(cfg.dataset, "train")
    fit_idx, held_idx = holdout_split([r.name for r in train_set.records],
                                      cfg.calibration.holdout, cfg.calibration.seed)
    train = dataset_features(cfg, extractor, info, train_set.subset(fit_idx), device,
                             "train features")
    held = (dataset_features(cfg, extractor, info, train_set.subset(held_idx), device,
                             "held-out features") if len(held_idx) else None)
    test = dataset_features(cfg, extractor, info, build_dataset(cfg.dataset, "test"),
                            device, "test features")
    seconds["features"] = time.perf_counter() - t0
    log.info("features: train %s, test %s (%.1fs)", tuple(train.features.shape),
             tuple(test.features.shape), seconds["features"])

    _, c, h, w = train.features.shape
    detector = create(cfg, FeatureShape(c, h, w), device, seed=client_seed(cfg, 0))
    first, last = rounds(cfg, detector)
    seconds["fit"] = seconds["merge"] = 0.0
    losses: list[float] = []
    global_summary = None
    upload_bytes = 0
    for round_t in range(first, last + 1):
        t = time.perf_counter()
        fit = detector.fit(train.features, global_summary, round_t)
        summary = detector.validate(detector.summarize(round_t), "client 0")
        seconds["fit"] += time.perf_counter() - t
        upload_bytes = summary_nbytes(summary)
        t = time.perf_counter()
        global_summary = detector.merge([summary], round_t)
        seconds["merge"] += time.perf_counter() - t
        if round_t > 0 and detector.iterative:
            losses.append(fit.loss)
            log.info("round %d/%d: loss %.4f", round_t, last, fit.loss)
    assert global_summary is not None

    t = time.perf_counter()
    scores = detector.score(test.features, global_summary, cfg.dataset.image_size)
    metrics = evaluate(scores.image, test.labels, scores.maps, test.masks)
    seconds["scoring"] = time.perf_counter() - t
    cal = calibrate(None if held is None else detector.score(
        held.features, global_summary, cfg.dataset.image_size).image, cfg.calibration.quantile)
    seconds["total"] = time.perf_counter() - t0
    return {
        **{k: float(v) for k, v in metrics.items()},
        "detector": label(cfg),
        "seconds": seconds,
        "summary_shapes": {k: list(v.shape) for k, v in global_summary.items()},
        "summary_bytes": summary_nbytes(global_summary),
        "upload_bytes": upload_bytes,
        "threshold": cal.threshold,
        "train_images": len(train),
        "holdout_images": 0 if held is None else len(held),
        "test_images": len(test),
        "losses": losses,
        "backbone": info,
        "config": asdict(cfg),
    }
