"""The FedDyMem paper's personalised baselines as exchanges (FedPHP, APPLE, DBE): each
one's own rule checked on FedDyMem's tiny head (their conformance is
tests/test_exchanges.py's), and the MMD they distil with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedad.components.mmd import mmd
from fedad.detectors.base import FeatureShape
from fedad.detectors.registry import client_seed, create, exchange_for, resolve
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.exchanges.weights import WEIGHTS
from tests.test_detectors import features, tiny_cfg

SHAPE = FeatureShape(12, 4, 4)


def pair(exchange: str, sites: int = 3, **changes):
    cfg = tiny_cfg("feddymem")
    cfg.exchange, cfg.num_clients, cfg.train.rounds = exchange, sites, 4
    cfg.train.batch_size = 2
    for k, v in changes.items():
        section, name = k.split(".")
        setattr(getattr(cfg, section), name, v)
    cfg = resolve(cfg)
    server = exchange_for(cfg, create(cfg, SHAPE, "cpu", seed=cfg.train.seed))
    server.check()
    server.start()
    site = [exchange_for(cfg, create(cfg, SHAPE, "cpu", seed=client_seed(cfg, i)))
            for i in range(sites)]
    return cfg, server, site


def params(ex) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ex.detector.module().named_parameters()}


def test_mmd_is_zero_between_equal_samples_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = torch.randn(64, 5, generator=g)
    assert float(mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    near, far = float(mmd(x, y)), float(mmd(x, y + 3.0))
    assert 0 < near < far
    z = y.clone().requires_grad_(True)
    mmd(x, z + 1.0).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="samples"):
        mmd(x, y[:, :3])


def test_fedphp_uploads_the_local_model_and_scores_with_the_inherited_one():
    cfg, server, (site, *_) = pair("fedphp")
    x = features(5, 0, SHAPE)
    glob = {k: torch.from_numpy(np.array(v)) for k, v in server.payload(0, 1)[WEIGHTS].items()}
    state: dict = {}
    up, _ = site.fit(x, server.payload(0, 1), 1, state)
    local = {k: torch.from_numpy(np.array(v)) for k, v in up[WEIGHTS].items()}
    mu = cfg.fedphp.mu * 1 / cfg.train.rounds  # round 1: the private model is the global
    now = params(site)
    for k, v in now.items():
        torch.testing.assert_close(v, (1 - mu) * local[k] + mu * glob[k])
        torch.testing.assert_close(state[f"fedphp.private.{k}"], v)
    assert any(not torch.equal(local[k], glob[k]) for k in now)  # it trained
    assert site.evaluation_payload(0) == {} and server.evaluation_payload(0) == {}
    # round 2 inherits from the private model kept in the site's state
    up2, _ = site.fit(x, server.payload(0, 2), 2, state)
    mu2 = cfg.fedphp.mu * 2 / cfg.train.rounds
    for k, v in params(site).items():
        expect = (1 - mu2) * torch.from_numpy(np.array(up2[WEIGHTS][k])) + mu2 * now[k]
        torch.testing.assert_close(v, expect)


def test_fedphp_mixes_batchnorm_statistics_with_the_weights_they_belong_to():
    cfg, server, (site, *_) = pair("fedphp", **{"head.batch_norm": True})
    x = features(5, 0, SHAPE)
    glob = {k: torch.from_numpy(np.array(v)) for k, v in server.payload(0, 1)[WEIGHTS].items()}
    stats = [k for k in glob if k.endswith(("running_mean", "running_var"))]
    assert stats  # the head has BatchNorm
    state: dict = {}
    up, _ = site.fit(x, server.payload(0, 1), 1, state)
    local = {k: torch.from_numpy(np.array(v)) for k, v in up[WEIGHTS].items()}
    mu = cfg.fedphp.mu * 1 / cfg.train.rounds
    now = site.detector.module().state_dict()
    for k in stats:
        assert not torch.equal(local[k], glob[k])  # training moved the statistics
        torch.testing.assert_close(now[k], (1 - mu) * local[k] + mu * glob[k])
        torch.testing.assert_close(state[f"fedphp.private.{k}"], now[k])
    # round 2: the private model's statistics come from the site's state, not the global
    kept = {k: now[k].clone() for k in stats}
    up2, _ = site.fit(x, server.payload(0, 2), 2, state)
    mu2 = cfg.fedphp.mu * 2 / cfg.train.rounds
    after = site.detector.module().state_dict()
    for k in stats:
        expect = (1 - mu2) * torch.from_numpy(np.array(up2[WEIGHTS][k])) + mu2 * kept[k]
        torch.testing.assert_close(after[k], expect)


def test_fedphp_with_lam_zero_trains_as_fedavg_does():
    _, server, (a, *_) = pair("fedphp", **{"fedphp.lam": 0.0})
    _, other, (b, *_) = pair("fedavg")
    x = features(5, 0, SHAPE)
    ua, _ = a.fit(x, server.payload(0, 1), 1, {})
    ub, _ = b.fit(x, other.payload(0, 1), 1, {})
    for k in ub[WEIGHTS]:
        np.testing.assert_allclose(ua[WEIGHTS][k], ub[WEIGHTS][k], rtol=1e-5, atol=1e-6)


def test_apple_step_and_schedule_follow_the_rule():
    from fedad.exchanges.apple import adapt, lam_at, mixed

    cores = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, -1.0])}]
    p, p0 = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.75],
                                                                        dtype=torch.float64)
    g = {"w": torch.tensor([0.2, -0.4])}
    adapt(cores, p, p0, g, own=0, lr=0.1, dr_lr=0.5, lam=1.0, mu=0.2)
    own = torch.tensor([1.0, 2.0]) - 0.1 * 0.5 * g["w"]
    torch.testing.assert_close(cores[0]["w"], own)
    torch.testing.assert_close(cores[1]["w"], torch.tensor([3.0, -1.0]))
    p_0 = 0.5 - 0.5 * (float((g["w"] * own).mean()) + 0.2 * (0.5 - 0.25))
    p_1 = 0.5 - 0.5 * (float((g["w"] * cores[1]["w"]).mean()) + 0.2 * (0.5 - 0.75))
    assert p.tolist() == pytest.approx([p_0, p_1])
    torch.testing.assert_close(mixed(cores, p, ["w"])["w"],
                               p_0 * own + p_1 * torch.tensor([3.0, -1.0]))
    assert lam_at(1, 10, 0.5) == 1.0 and lam_at(6, 10, 0.5) == 0.0
    assert 0 < lam_at(3, 10, 0.5) < 1


def test_apple_relays_cores_and_a_site_scores_with_its_mixture():
    cfg, server, sites = pair("apple")
    x = [features(n, i, SHAPE) for i, n in enumerate((3, 5, 4))]
    start = dict(server.payload(0, 1)["apple.cores"])
    states = [{} for _ in sites]
    ups = []
    for i in (0, 1):  # site 2 is absent
        up, _ = sites[i].fit(x[i], server.payload(i, 1), 1, states[i])
        ups.append(Upload(i, i, server.validate(up, f"client {i}", 1), len(x[i])))
    server.payload(2, 1)
    server.aggregate(ups, 1)
    cores = server.payload(0, 2)["apple.cores"]
    key = next(k for k in server.weights if k.endswith("conv.weight"))
    assert not np.array_equal(cores[f"0.{key}"], start[f"0.{key}"])  # site 0's new core
    assert np.array_equal(cores[f"2.{key}"], start[f"2.{key}"])  # the absent site's stays
    np.testing.assert_array_equal(cores[f"1.{key}"], ups[1].records[WEIGHTS][key])
    p = states[0]["apple.p"]
    assert p.shape == (3,) and not torch.allclose(p, torch.full((3,), 1 / 3,
                                                                    dtype=torch.float64))
    assert server.payload(0, 2)["apple"]["p0"].tolist() == pytest.approx([1 / 3] * 3)
    assert server.evaluation_payload(0) == {}
    with pytest.raises(ConfigError, match="more sites"):
        server.payload(3, 2)


def test_dbe_trains_a_bias_that_never_leaves_the_site_and_averages_the_means():
    cfg, server, sites = pair("dbe", sites=2, **{"dbe.momentum": 1.0})
    x = [features(n, i, SHAPE) for i, n in enumerate((3, 5))]
    assert "shift" not in server.payload(0, 1)[WEIGHTS]
    ups, states = [], [{}, {}]
    for i, ex in enumerate(sites):
        up, _ = ex.fit(x[i], server.payload(i, 1), 1, states[i])
        assert "shift" not in up[WEIGHTS]
        assert torch.count_nonzero(ex.detector.module().shift) == 0  # round 1: no bias yet
        ups.append(Upload(i, i, server.validate(up, f"client {i}", 1), len(x[i])))
    server.aggregate(ups, 1)
    means = [u.records["dbe"]["mean"] for u in ups]
    np.testing.assert_allclose(server.global_mean, (3 * means[0] + 5 * means[1]) / 8,
                               rtol=1e-6)
    assert "dbe" in server.payload(0, 2)
    sites[0].fit(x[0], server.payload(0, 2), 2, states[0])
    shift = sites[0].detector.module().shift
    assert not shift.requires_grad and torch.count_nonzero(shift) > 0
    # the bias is scored with: it is in the site's saved state, and it changes the head
    saved = sites[0].detector.state()
    assert torch.equal(saved["head.shift"], shift)
    bad = {WEIGHTS: ups[0].records[WEIGHTS], "dbe": {"mean": np.full(12, np.nan, "f4")}}
    with pytest.raises(Exception, match="client 9"):
        server.validate(bad, "client 9", 1)


def test_a_head_saved_before_the_shift_loads_with_a_zero_one():
    from fedad.detectors.feddymem.config import HeadConfig
    from fedad.detectors.feddymem.head import FedDyMemHead

    head = FedDyMemHead(6, HeadConfig(grid_size=4, phi_hidden=8))
    old = {k: v for k, v in head.state_dict().items() if k != "shift"}
    again = FedDyMemHead(6, HeadConfig(grid_size=4, phi_hidden=8))
    again.shift.fill_(1.0)
    again.load_state_dict(old)
    assert torch.count_nonzero(again.shift) == 0


def test_personalised_exchanges_refuse_a_module_without_a_representation():
    """The pair is refused when the config is composed, naming the capability (diffad
    trains a module but declares no representation and no row matrix)."""
    for name, what in (("fedphp", "Represents"), ("dbe", "ShiftedRepresentation"),
                       ("rowfed", "RowMatrix")):
        cfg = tiny_cfg("diffad")
        cfg.exchange = name
        with pytest.raises(ConfigError, match=f"exchange={name} requires {what} .*which "
                                              "detector=diffad does not declare"):
            resolve(cfg)
