"""The one client handler of every bank-exchange detector (FedDyMem, PatchCore, PaDiM):
it moves Flower records in and out and calls the detector contract
(:mod:`fedad.detectors.base`); the work is the detector's.

A detector's client state (FedDyMem's head and Adam moments) stays on the client, in
``context.state``, so it survives rounds on real SuperNodes too (and in a per-round
checkpoint under the run folder, for ``resume``); only summaries travel.
At the final evaluation each client also calibrates its threshold on its held-out normal
images and leaves what ``fedad-predict`` needs under ``<run dir>/site-<id>/``.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.context import checkpoint, client_setup, restored_state
from clients.data import ClientData, validation_metrics
from fedad.config import RunConfig
from fedad.detectors.base import Detector, FeatureShape, Summary
from fedad.detectors.registry import client_seed, create
from fedad.metrics import evaluate as compute_metrics
from fedad.payload import BANK, CONFIG, METRICS, NUM_EXAMPLES
from fedad.shared_scores import score_shared
from fedad.site import save_site

STATE = "detector-state"


def arrays_of(record: ArrayRecord) -> Summary:
    return {k: v.numpy() for k, v in record.items()}


def record_of(arrays: Summary) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def setup(context: Context, msg: Message) -> tuple[RunConfig, ClientData, Detector, float]:
    """Run config, data, the detector with its saved state (from ``context.state``, or from
    the site's checkpoint when the server resumes a run), seconds spent on features."""
    cfg, data, seconds_features = client_setup(context)
    _, c, h, w = data.train.features.shape
    detector = create(cfg, FeatureShape(c, h, w), data.device,
                      seed=client_seed(cfg, data.partition_id))
    state = restored_state(context, msg, STATE, data.partition_id,
                           lambda: bool(detector.state()))
    if state is not None:
        detector.load_state(state)
    return cfg, data, detector, seconds_features


def train(msg: Message, context: Context) -> Message:
    """Fit on the client's training features (against the global summary after round 0)
    and upload the summary."""
    cfg, data, detector, sec_features = setup(context, msg)
    round_t = int(msg.content[CONFIG]["round"])
    global_summary = arrays_of(msg.content[BANK]) if BANK in msg.content else None
    t = time.perf_counter()
    info = detector.fit(data.train.features, global_summary, round_t)
    sec_fit = time.perf_counter() - t
    t = time.perf_counter()
    summary = detector.summarize(round_t)
    sec_summarize = time.perf_counter() - t
    state = detector.state()
    if state:
        context.state[STATE] = ArrayRecord(torch_state_dict=state)
        checkpoint(msg, data.partition_id, round_t, state)
    # stages: "train" (FedDyMem's epochs) vs the rest (reduce, coreset, statistics)
    stages = info.seconds or {}
    other = sum(v for k, v in stages.items() if k != "train")
    metrics = MetricRecord({
        NUM_EXAMPLES: len(data.train), "partition-id": data.partition_id,
        "loss": float(info.loss), "seconds-features": sec_features,
        "seconds-train": float(stages.get("train", sec_fit - other)),
        "seconds-reduce": float(other + sec_summarize),
    })
    return Message(content=RecordDict({BANK: record_of(summary), METRICS: metrics}),
                   reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Score the test set with the global summary (and this client's state). In the final
    round, also calibrate the threshold on the held-out normals and save the site."""
    cfg, data, detector, sec_features = setup(context, msg)
    global_summary = arrays_of(msg.content[BANK])
    t = time.perf_counter()
    # a stateless detector's scores of the shared test set are the same on every client of
    # this process: scored (and measured) once (fedad/shared_scores.py)
    scores, memo = score_shared(detector, cfg, data.test, global_summary,
                                cfg.dataset.image_size)
    if "metrics" not in memo:
        memo["metrics"] = compute_metrics(scores.image, data.test.labels, scores.maps,
                                          data.test.masks)
    values = dict(memo["metrics"])
    if data.validation is not None:  # the validation split: what choices are made on
        values.update(validation_metrics(data, detector.score(
            data.validation.features, global_summary, cfg.dataset.image_size)))
    sec_eval = time.perf_counter() - t
    conf = msg.content[CONFIG]
    out = str(conf.get("out", ""))
    extra: dict[str, float] = {}
    if bool(conf.get("final", False)) and out:
        held = None
        if data.holdout is not None:
            held = detector.score(data.holdout.features, global_summary,
                                  cfg.dataset.image_size).image
        site = save_site(out, data.partition_id, detector, held, cfg.calibration.quantile)
        if site.threshold is not None:
            extra["threshold"] = site.threshold
        if data.partition_id == 0 and cfg.examples > 0:
            from clients.examples import save_examples  # matplotlib only when needed

            save_examples(cfg, data, scores, out, cfg.examples)
    metrics = MetricRecord({**values, **extra, NUM_EXAMPLES: len(data.test),
                            "partition-id": data.partition_id,
                            "seconds-features": sec_features, "seconds-eval": sec_eval})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
