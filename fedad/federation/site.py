"""What a site does with one message from the server, for every detector x exchange (no
Flower here). A transport (Flower's ClientApp, the in-process runner) hands
:func:`handle` the message kind, the :class:`~fedad.federation.records.Envelope`, the run
config, the node's data description and a :class:`StateStore`; it gets back the
:class:`~fedad.federation.records.Reply` to send.

* ``query`` (before round 1): load the data (extracting and caching features) and say which
  files could not be read (``dataset.on_bad``: refuse, or skip and list them);
* ``train``: the exchange's ``fit`` (the detector learns from the site's training features
  and the payload) gives the upload; the site's state (detector + exchange) is stored and,
  when the server named a run folder, checkpointed for ``resume``;
* ``evaluate``: score the test set (and the validation split) against what the exchange
  says to score with; in the final round also calibrate the threshold on the held-out
  normals and leave what ``fedad-predict`` needs (and the report's ``scores.npz``) under
  ``<run dir>/site-<id>/``.

A detector's state (FedDyMem's head and Adam moments) and an exchange's (SCAFFOLD's ``c_i``)
stay at the site between rounds: in the store (Flower's ``context.state``, so it survives
rounds on real SuperNodes too) and in the per-round checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from fedad.config.schema import RunConfig
from fedad.detectors.base import Detector, FeatureShape
from fedad.detectors.capabilities import HeldOutLoss
from fedad.detectors.registry import client_seed, create, exchange_for, feature_config
from fedad.errors import BadFilesError, ConfigError
from fedad.evaluation.metrics import evaluate as compute_metrics
from fedad.evaluation.scores import score
from fedad.evaluation.shared_scores import score_shared
from fedad.exchanges.base import Exchange
from fedad.federation.checkpoint import load_client, save_client
from fedad.federation.faults import active, inject
from fedad.federation.payload import NOTE, NUM_EXAMPLES
from fedad.federation.records import EVALUATE, QUERY, TRAIN, Envelope, Reply
from fedad.federation.site_data import (
    ClientData,
    NodeData,
    extractor_for,
    load_node_data,
    node_config_applied,
    site_images,
    validation_metrics,
)
from fedad.federation.site_files import save_site
from fedad.federation.uploads import uploads_for
from fedad.refinements.base import SiteInputs, SiteOutcome
from fedad.refinements.registry import NONE, refinement_for

log = logging.getLogger("fedad")
EXCHANGE_STATE = "exchange."  # prefix of the exchange's part of a site's state


class StateStore(Protocol):
    """Where a site's state lives between messages (Flower: ``context.state``)."""

    def get(self) -> dict[str, torch.Tensor] | None: ...

    def put(self, state: dict[str, torch.Tensor]) -> None: ...


class DictStore:
    """A :class:`StateStore` in memory (one process)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def get(self) -> dict[str, torch.Tensor] | None:
        return self.state

    def put(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state


@dataclass
class SiteRound:
    """One message's working set: config, data, the site's detector and exchange, and the
    exchange's part of the site state."""

    cfg: RunConfig
    data: ClientData
    detector: Detector
    exchange: Exchange
    exchange_state: dict[str, torch.Tensor]
    seconds_features: float

    def state(self) -> dict[str, torch.Tensor]:
        return {**self.detector.state(),
                **{EXCHANGE_STATE + k: v for k, v in self.exchange_state.items()}}


def site_config(cfg: RunConfig, node: NodeData) -> RunConfig:
    """The run config as this node uses it: its data root, cache dir and the backbone
    levels its detector reads (:func:`~fedad.detectors.registry.feature_config`)."""
    return feature_config(node_config_applied(cfg, node))


def restored_state(store: StateStore, envelope: Envelope, site: int,
                   stateful: Callable[[], bool]) -> dict[str, torch.Tensor] | None:
    """The site's state: the store's, or, in the first round of a resumed run (the message
    carries ``resume-round``; a fresh process has none), the site's checkpoint of that round
    (:mod:`fedad.federation.checkpoint`). ``None``: nothing to restore.

    Raises:
        ConfigError: a resumed run, a site with state (``stateful()``, asked only then) and
            no checkpoint of the round.
    """
    state = store.get()
    if state is not None:
        return state
    conf = envelope.config
    if "resume-round" not in conf or not str(conf.get("out", "")):
        return None
    try:
        return load_client(str(conf["out"]), site, int(conf["resume-round"]))
    except ConfigError:
        if stateful():
            raise
        return None


def checkpoint(envelope: Envelope, site: int, rnd: int, state: dict[str, torch.Tensor]) -> None:
    """Keep the site's state after round ``rnd`` in ``<run dir>/site-<id>/`` (when the
    server named the run folder), so a killed run can resume."""
    out = str(envelope.config.get("out", ""))
    if not out:
        return
    try:
        save_client(out, site, rnd, state)
    except OSError as exc:  # e.g. the server's run folder is not writable on this host
        log.warning("site %d: no checkpoint of round %d (%s); a resumed run cannot restore "
                    "this site's state", site, rnd, exc)


def open_round(cfg: RunConfig, node: NodeData, envelope: Envelope,
               store: StateStore) -> SiteRound:
    """Config, data, the detector and exchange with the site's saved state."""
    cfg = site_config(cfg, node)
    data, seconds = load_node_data(cfg, node)
    detector = create(cfg, FeatureShape(*data.train.features.shape[1:]), data.device,
                      seed=client_seed(cfg, data.partition_id))
    exchange = exchange_for(cfg, detector)
    state = restored_state(store, envelope, data.partition_id,
                           lambda: bool(detector.state()) or exchange.site_model)
    mine: dict[str, torch.Tensor] = {}
    if state is not None:
        detector.load_state({k: v for k, v in state.items()
                             if not k.startswith(EXCHANGE_STATE)})
        mine = {k[len(EXCHANGE_STATE):]: v for k, v in state.items()
                if k.startswith(EXCHANGE_STATE)}
    return SiteRound(cfg, data, detector, exchange, mine, seconds)


def train(run: SiteRound, envelope: Envelope, store: StateStore) -> Reply:
    """Fit (the exchange's client part) and upload."""
    round_t = int(envelope.config["round"])
    t = time.perf_counter()
    upload, info = run.exchange.fit(run.data.train.features, envelope.records, round_t,
                                    run.exchange_state)
    seconds = time.perf_counter() - t
    state = run.state()
    if state:
        store.put(state)
        checkpoint(envelope, run.data.partition_id, round_t, state)
    stages = info.seconds or {}
    other = sum(v for k, v in stages.items() if k != "train")
    notes = dict(info.notes or {})
    # as it is, or (secure.enabled) only its scaled sum terms, for SecAgg+ to mask
    upload, packed = uploads_for(run.cfg).pack(run.cfg, run.exchange, upload,
                                               len(run.data.train), round_t,
                                               run.data.partition_id)
    notes.update(packed)
    return Reply(key=-1, records=upload, metrics={
        NUM_EXAMPLES: len(run.data.train), "partition-id": run.data.partition_id,
        "loss": float(info.loss), "steps": int(info.steps),
        "seconds-features": run.seconds_features,
        # "train" (epochs) vs the rest (reduce, coreset, statistics), and each stage
        "seconds-train": float(stages.get("train", seconds - other)),
        "seconds-reduce": float(other),
        **{f"seconds-{k}": float(v) for k, v in stages.items() if k not in ("train", "reduce")},
        **{f"{NOTE}{k}": float(v) for k, v in notes.items()}})


def refine(run: SiteRound, node: NodeData, summary, scores, held) -> SiteOutcome | None:
    """The run's refinement (``refine=<name>``, :mod:`fedad.refinements.registry`) of the
    site's test maps at its final evaluation; ``None`` without one."""
    refinement = refinement_for(run.cfg)
    if refinement is None:
        return None
    extractor, info = extractor_for(run.cfg)
    train, test = site_images(run.cfg, node)
    return refinement.at_site(SiteInputs(
        run.cfg, run.detector, summary, extractor, info, train, test, scores,
        None if held is None else held.maps, run.data.partition_id))


def keep_scores(out: str, data: ClientData, cfg: RunConfig, scores, threshold, held) -> None:
    """``site-<id>/scores.npz`` for the run's report (:mod:`fedad.evaluation.cases`); a
    failure only costs the report its per-image parts."""
    from fedad.evaluation.cases import save_scores

    try:
        save_scores(out, data.partition_id, cfg, data.test, scores, threshold,
                    None if held is None else held.maps)
    except Exception as exc:  # noqa: BLE001 - the report's extra, never the run's outcome
        log.warning("site %d: no per-image scores for the report (%s: %s)",
                    data.partition_id, type(exc).__name__, exc)


def evaluate(run: SiteRound, envelope: Envelope, node: NodeData) -> Reply:
    """Score the test set (and validation split) against what the exchange says; in the
    final round also calibrate the threshold and save the site for ``fedad-predict``."""
    cfg, data, detector = run.cfg, run.data, run.detector
    size = cfg.dataset.scored_size()
    t = time.perf_counter()
    summary = run.exchange.scoring_summary(data.train.features, envelope.records)
    values: dict = {}
    tested = bool(envelope.config.get("test", True))
    if tested:  # False: the validation split only
        # a stateless detector's scores of the shared test set are the same on every site
        # of this process: scored (and measured) once (fedad/evaluation/shared_scores.py)
        scores, memo = score_shared(detector, cfg, data.test, summary, size)
        if "metrics" not in memo:
            memo["metrics"] = compute_metrics(scores.image, data.test.labels, scores.maps,
                                              data.test.masks)
        values.update(memo["metrics"])
    if data.validation is not None:  # the validation split: what choices are made on
        values.update(validation_metrics(data, score(detector, data.validation.features,
                                                     summary, size)))
        values["val-images"] = len(data.validation)
        if isinstance(detector, HeldOutLoss):  # the objective on the held-out normals
            normal = data.validation.features[data.validation.labels == 0]
            values["val_loss"] = detector.held_out_loss(normal)
    out = str(envelope.config.get("out", ""))
    final = bool(envelope.config.get("final", False))
    held = None
    if final and data.holdout is not None and (out or cfg.refine != NONE):
        held = score(detector, data.holdout.features, summary, size)
    refined = refine(run, node, summary, scores, held) if final and tested else None
    if refined is not None:
        values.update(refined.metrics)
    seconds = time.perf_counter() - t
    if final and out:
        # a site that scores against its own summary keeps it (the server has none)
        own = summary if run.exchange.site_model else None
        site = save_site(out, data.partition_id, detector,
                         None if held is None else held.image, cfg.calibration.quantile,
                         summary=own)
        if refined is not None and refined.save is not None:
            refined.save(Path(out) / f"site-{data.partition_id}")
        if site.threshold is not None:
            values["threshold"] = site.threshold
        if tested:  # per-image scores and a few cases for the run's report
            keep_scores(out, data, cfg, scores, site.threshold, held)
        if data.partition_id == 0 and cfg.examples > 0:
            from fedad.federation.examples import save_examples  # matplotlib when needed

            save_examples(cfg, data, scores, out, cfg.examples)
    return Reply(key=-1, metrics={**values, NUM_EXAMPLES: len(data.test),
                                  "partition-id": data.partition_id,
                                  "seconds-features": run.seconds_features,
                                  "seconds-eval": seconds})


def query(cfg: RunConfig, node: NodeData) -> Reply:
    """The start-up data check: ``refused`` (0/1), image counts and unreadable files."""
    metrics: dict = {"partition-id": node.site}
    try:
        data, seconds = load_node_data(site_config(cfg, node), node)
    except BadFilesError as exc:
        return Reply(key=-1, metrics={**metrics, "refused": 1},
                     lists={"bad-files": list(exc.files)})
    sets = [data.train, data.test, data.holdout, data.validation]
    skipped = list(dict.fromkeys(f for s in sets if s is not None for f in s.skipped))
    return Reply(key=-1, metrics={**metrics, "refused": 0, "train-images": len(data.train),
                                  "test-images": len(data.test), "seconds-features": seconds},
                 lists={"skipped-files": skipped} if skipped else {})


def handle(kind: str, envelope: Envelope, cfg: RunConfig, node: NodeData,
           store: StateStore) -> Reply:
    """The reply of this site to one message (``key`` left for the transport to set).
    Faults named in ``cfg.faults`` (reliability tests) are injected here."""
    if kind == QUERY:
        return query(cfg, node)
    if kind not in (TRAIN, EVALUATE):
        raise ConfigError(f"site {node.site}: unknown message kind {kind!r}")
    kinds = []
    if kind == TRAIN and cfg.faults:
        rnd = int(envelope.config.get("round", -1))
        kinds = active(cfg.faults, node.site, rnd)
        if "raise" in kinds:
            raise RuntimeError(f"fault injection: partition {node.site} fails in round {rnd}")
    run = open_round(cfg, node, envelope, store)
    if kind == EVALUATE:
        return evaluate(run, envelope, node)
    reply = train(run, envelope, store)
    reply.records = inject(reply.records, kinds)
    return reply
