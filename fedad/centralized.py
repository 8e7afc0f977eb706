"""The centralized job: one process, one "client" holding all training data, no Flower.

It is FedDyMem with N = 1: the round-0 bank (Alg. 4), then ``rounds`` rounds of E local
epochs of the metric loss against the current bank, memory-reduce and the (trivial, N=1)
aggregation; then the test set is scored once, after the last round. Nothing is chosen on
the test set. This is the quality reference for every federated run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from fedad.config import RunConfig
from fedad.data.factory import build_dataset
from fedad.detectors.feddymem.client import FedDyMemClient
from fedad.device import resolve_device
from fedad.feature_cache import dataset_features
from fedad.features import build_feature_extractor
from fedad.memory import aggregate, bank_nbytes
from fedad.metrics import evaluate

log = logging.getLogger("fedad")


def run_centralized(cfg: RunConfig) -> dict:
    """Train, build the bank, score the test set; return metrics, timings and sizes."""
    seconds: dict[str, float] = {}
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    extractor, info = build_feature_extractor(cfg.backbone)
    train = dataset_features(cfg, extractor, info, build_dataset(cfg.dataset, "train"),
                             device, "train features")
    test = dataset_features(cfg, extractor, info, build_dataset(cfg.dataset, "test"),
                            device, "test features")
    seconds["features"] = time.perf_counter() - t0
    log.info("features: train %s, test %s (%.1fs)", tuple(train.features.shape),
             tuple(test.features.shape), seconds["features"])

    client = FedDyMemClient(info["channels"], cfg.head, cfg.train, device, seed=cfg.train.seed)
    seconds["training"] = 0.0
    t = time.perf_counter()
    bank = aggregate([client.initial_bank(train.features)], cfg.train.aggregation,
                     seed=cfg.train.seed, niter=cfg.train.kmeans_iters,
                     init=cfg.train.kmeans_init)
    seconds["bank"] = time.perf_counter() - t
    losses: list[list[float]] = []
    for round_t in range(1, cfg.train.rounds + 1):
        t = time.perf_counter()
        epoch_losses = client.train_epochs(train.features, bank)
        seconds["training"] += time.perf_counter() - t
        t = time.perf_counter()
        reduced = client.reduce(train.features, bank, round_t)
        bank = aggregate([reduced], cfg.train.aggregation, seed=cfg.train.seed + round_t,
                         niter=cfg.train.kmeans_iters,
                     init=cfg.train.kmeans_init)
        seconds["bank"] += time.perf_counter() - t
        losses.append(epoch_losses)
        if epoch_losses:
            log.info("round %d/%d: metric loss %.4f", round_t, cfg.train.rounds,
                     epoch_losses[-1])

    t = time.perf_counter()
    scores = client.score(test.features, bank, cfg.dataset.image_size, cfg.score)
    metrics = evaluate(scores.image, test.labels, scores.maps, test.masks)
    seconds["scoring"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return {
        **{k: float(v) for k, v in metrics.items()},
        "seconds": seconds,
        "bank_shape": list(bank.shape),
        "bank_bytes": bank_nbytes(bank),
        "head_parameters": sum(p.numel() for p in client.head.parameters()),
        "train_images": len(train),
        "test_images": len(test),
        "losses": losses,
        "backbone": info,
        "config": asdict(cfg),
    }
