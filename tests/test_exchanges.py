"""Every detector x exchange pair a detector declares passes one conformance test (no
Flower runtime): fit, a round trip of what travels through Flower's records, score, a state
round trip, a checkpoint and exact resume, a bad upload rejected and named."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.toy_trainable  # noqa: F401  (registers the toy detector and exchange)
from clients.codec import arrays_of, content
from fedad.detectors.base import FeatureShape, Scores
from fedad.detectors.registry import (
    DETECTORS,
    client_seed,
    create,
    detector_class,
    exchange_for,
    resolve,
    supported,
)
from fedad.errors import BankError
from fedad.exchanges.base import Upload
from fedad.exchanges.registry import EXCHANGES
from fedad.federation.checkpoint import load_server, save_server
from tests.test_detectors import features, tiny_cfg

# every pair whose exchange's required capabilities the detector declares, but those the
# exchange itself refuses once built (test_pairs_an_exchange_cannot_train_are_refused_...)
REFUSED = {("diffad", "fedbn"), ("asymst", "apple")}
# (fedad's own detectors and exchanges: a plugin a test registers is not collected here;
# anomalib's models, the optional extra, are in tests/test_anomalib.py)
PAIRS = [(d, e) for d in sorted(DETECTORS) for e in supported(d) if (d, e) not in REFUSED
         and DETECTORS[d].startswith("fedad.")
         and not DETECTORS[d].startswith("fedad.detectors.anomalib.")
         and EXCHANGES[e].startswith("fedad.")]
# what a pair needs beyond the tiny defaults (FedBN keeps BatchNorm local: the head needs it)
EXTRA = {("feddymem", "fedbn"): lambda c: setattr(c.head, "batch_norm", True)}
SHAPE = FeatureShape(12, 4, 4)
PIXELS = FeatureShape(3, 32, 32)  # what a detector that reads images is handed


def tiny_asymst(cfg) -> None:
    """asymst's smallest run: a DDPM round, then a student round (the pool drawn)."""
    a = cfg.asymst
    a.student_steps, a.head_steps, a.pool, a.sample_steps = 1, 1, 2, 2
    a.student_width, a.head_channels = 8, 8
    cfg.ddpm.channels, cfg.ddpm.groups, cfg.ddpm.steps, cfg.ddpm.crop = [8, 16], 4, 1, 16
    cfg.train.local_steps, cfg.train.rounds = 1, 0  # rounds: the budget's (3)


def tiny_diffad(cfg) -> None:
    """diffad's smallest run: a two-level UNet of 8/16 channels, two steps a round."""
    cfg.ddpm.channels, cfg.ddpm.groups, cfg.ddpm.steps, cfg.ddpm.crop = [8, 16], 4, 2, 16
    cfg.diffad.norm_images, cfg.diffad.size, cfg.diffad.head_stride = 2, 0, 2
    cfg.train.local_steps, cfg.train.rounds = 2, 0  # rounds: the budget's (1)


def shape_of(cfg) -> FeatureShape:
    return PIXELS if detector_class(cfg.detector).inputs == "images" else SHAPE


def config(detector: str, exchange: str):
    cfg = tiny_cfg(detector)
    cfg.exchange = exchange
    cfg.train.batch_size = 2
    EXTRA.get((detector, exchange), lambda c: None)(cfg)
    if detector == "asymst":
        tiny_asymst(cfg)
    if detector == "diffad":
        tiny_diffad(cfg)
    return resolve(cfg)


def site(cfg, i: int, state: dict | None = None):
    det = create(cfg, shape_of(cfg), "cpu", seed=client_seed(cfg, i))
    if state:
        det.load_state({k: v for k, v in state.items() if not k.startswith("exchange.")})
    return exchange_for(cfg, det)


def through_flower(records: dict) -> dict:
    """What arrives after Flower's ArrayRecords carried ``records``."""
    return arrays_of(content(records))


def one_round(server, sites, states, data, r):
    uploads = []
    for i, (ex, x) in enumerate(zip(sites, data, strict=True)):
        payload = through_flower(server.payload(i, r))
        upload, info = ex.fit(x, payload, r, states[i])
        sent = through_flower(upload)
        assert sent.keys() == upload.keys()
        for name in upload:
            assert all(np.array_equal(upload[name][k], sent[name][k]) for k in upload[name])
        uploads.append(Upload(i, i, server.validate(sent, f"client {i}", r), len(x)))
    desc = [server.descriptor(u.records) for u in uploads]
    assert len({d.shape for d in desc}) == 1 and all(np.isfinite(d).all() for d in desc)
    server.aggregate(uploads, r)
    return uploads


@pytest.mark.parametrize(("detector", "exchange"), PAIRS, ids=[f"{d}-{e}" for d, e in PAIRS])
def test_pair_conformance(detector: str, exchange: str, tmp_path: Path):
    cfg = config(detector, exchange)
    shape = shape_of(cfg)
    server = exchange_for(cfg, create(cfg, shape, "cpu", seed=cfg.train.seed))
    server.check()
    server.start()
    sites = [site(cfg, i) for i in range(3)]
    states: list[dict] = [{} for _ in range(3)]
    data = [features(n, i, shape) for i, n in enumerate((3, 5, 4))]
    first, last = server.rounds()
    last = min(last, first + 1)
    for r in range(first, last):
        one_round(server, sites, states, data, r)

    # checkpoint: the server's state and each site's through files, then the last round
    # both ways; a resumed run computes exactly what the uninterrupted one does
    save_server(tmp_path, {"round": last - 1, "exchange": server.state()})
    site_files = []
    for i, ex in enumerate(sites):
        state = {**ex.detector.state(), **{f"exchange.{k}": v for k, v in states[i].items()}}
        torch.save(state, tmp_path / f"site{i}.pt")
        site_files.append(tmp_path / f"site{i}.pt")
    resumed = exchange_for(cfg, create(cfg, shape, "cpu", seed=cfg.train.seed))
    resumed.load_state(load_server(tmp_path)["exchange"])
    loaded = [torch.load(f, weights_only=True) for f in site_files]
    resumed_sites = [site(cfg, i, s) for i, s in enumerate(loaded)]
    resumed_states = [{k[9:]: v for k, v in s.items() if k.startswith("exchange.")}
                      for s in loaded]
    rng = torch.random.get_rng_state()
    a = one_round(server, sites, states, data, last)
    torch.random.set_rng_state(rng)
    b = one_round(resumed, resumed_sites, resumed_states, data, last)
    for ua, ub in zip(a, b, strict=True):
        for name in ua.records:
            for k in ua.records[name]:
                assert np.array_equal(ua.records[name][k], ub.records[name][k]), (name, k)
    for sa, sb in zip(sites, resumed_sites, strict=True):  # what stays at the site too
        da, db = sa.detector.state(), sb.detector.state()
        assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)

    # score: every site against what the exchange says, a far-off patch scores highest
    test = features(4, 99, shape)
    test[0, :, 1, 2] += 25.0
    ex = sites[0]
    summary = ex.scoring_summary(data[0], through_flower(server.evaluation_payload(0)))
    scores = ex.detector.score(test, summary, 32)
    assert isinstance(scores, Scores)
    assert scores.maps.shape == (4, 32, 32) and scores.image.shape == (4,)
    assert torch.isfinite(scores.maps).all()
    if shape is SHAPE:  # a network two tiny rounds old ranks nothing yet; features do
        assert int(scores.image.argmax()) == 0
    # state round trip: a fresh site with the saved state scores identically
    fresh = site(cfg, 0, copy.deepcopy(ex.detector.state()))
    again = fresh.detector.score(test, fresh.scoring_summary(
        data[0], through_flower(server.evaluation_payload(0))), 32)
    assert torch.allclose(again.image, scores.image, rtol=1e-5, atol=1e-6)

    # a bad upload is refused, naming the client (an exchange that uploads nothing has
    # nothing to refuse)
    if not server.upload_records:
        return
    good = copy.deepcopy(a[1].records)
    name = next(n for n in good if any(v.dtype.kind == "f" for v in good[n].values()))
    key = next(k for k, v in good[name].items() if v.dtype.kind == "f")
    bad = copy.deepcopy(good)
    bad[name][key] = np.full_like(bad[name][key], np.nan)
    with pytest.raises(BankError, match="client 7"):
        server.validate(bad, "client 7", last)
    with pytest.raises(BankError, match="client 7"):
        server.validate({k: v for k, v in good.items() if k != name}, "client 7", last)


def test_pairs_an_exchange_cannot_train_are_refused_when_composed():
    """diffad declares a trained module (FedBN's requirement) but normalises by GroupNorm;
    asymst trains its module part by part, which APPLE's mixture would move: the exchange
    refuses each when the config is composed, saying why."""
    from fedad.errors import ConfigError
    from fedad.federation.compose import check

    with pytest.raises(ConfigError, match="exchange=fedbn keeps BatchNorm.*has none.*GroupNorm"):
        check(config("diffad", "fedbn"))
    with pytest.raises(ConfigError, match="exchange=apple mixes every part.*Phased"):
        check(config("asymst", "apple"))
