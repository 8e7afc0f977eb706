"""RowFed's penalties and proximal operators (fedad/rowfed) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedad.rowfed.penalties import (
    KINDS,
    penalty,
    prox_entries,
    prox_group,
    prox_magnitude,
)

SETTINGS = [("scad", 0.6, 1.0, 3.7), ("scad", 0.3, 0.5, 5.0), ("mcp", 0.6, 1.0, 3.0),
            ("mcp", 1.0, 2.0, 1.5), ("l1", 0.4, 1.5, 0.0)]


@pytest.mark.parametrize(("kind", "lam", "rho", "a"), SETTINGS)
def test_the_magnitude_prox_is_the_brute_force_minimiser(kind, lam, rho, a):
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(0, 6 * lam, 40), [0.0, lam, lam + lam / rho, 3.7 * lam]])
    grid = np.linspace(0, 8 * lam, 400_001)
    for zi in z:
        objective = rho / 2 * (grid - zi) ** 2 + penalty(grid, kind, lam, a)
        best = grid[np.argmin(objective)]
        assert prox_magnitude(zi, kind, lam, rho, a) == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize(("kind", "lam", "rho", "a"), SETTINGS)
def test_the_group_and_entry_proxes_beat_every_random_candidate(kind, lam, rho, a):
    rng = np.random.default_rng(1)
    for _ in range(20):
        delta = rng.normal(scale=2 * lam, size=5)
        theta = prox_group(delta, kind, lam, rho, a)

        def group(t, delta=delta):
            return rho / 2 * np.sum((t - delta) ** 2, -1) + penalty(
                np.linalg.norm(t, axis=-1), kind, lam, a)

        others = theta + rng.normal(scale=lam, size=(2000, 5)) * rng.uniform(0, 1, (2000, 1))
        assert group(theta) <= group(others).min() + 1e-9
        assert group(theta) <= group(np.zeros(5)) + 1e-9
        x = prox_entries(delta, kind, lam, rho, a)

        def entries(t, delta=delta):
            return rho / 2 * np.sum((t - delta) ** 2, -1) + penalty(t, kind, lam, a).sum(-1)

        others = x + rng.normal(scale=lam, size=(2000, 5)) * rng.uniform(0, 1, (2000, 1))
        assert entries(x) <= entries(others).min() + 1e-9


def test_proxes_shrink_small_values_to_zero_and_leave_large_ones_unbiased():
    for kind in ("scad", "mcp"):
        assert prox_magnitude(0.5, kind, 0.6, 1.0, 3.7) == 0.0  # below lam / rho
        assert prox_magnitude(10.0, kind, 0.6, 1.0, 3.7) == 10.0  # beyond a lam: unbiased
    assert prox_magnitude(10.0, "l1", 0.6, 1.0) == pytest.approx(9.4)  # the lasso's bias
    row = np.array([[3.0, 4.0], [0.1, 0.0]])
    out = prox_group(row, "scad", 0.6, 1.0)
    assert np.allclose(out[0], row[0]) and np.allclose(out[1], 0.0)


def test_settings_without_a_unique_prox_are_refused():
    with pytest.raises(ValueError, match="SCAD"):
        prox_magnitude(1.0, "scad", 0.6, 0.2, 3.7)  # rho (a - 1) < 1: non-convex
    with pytest.raises(ValueError, match="MCP"):
        prox_magnitude(1.0, "mcp", 0.6, 0.2, 3.0)
    with pytest.raises(ValueError, match="penalty"):
        prox_magnitude(1.0, "lasso", 0.6, 1.0)
    assert set(KINDS) == {"scad", "mcp", "l1"}


def toy_problem(m: int = 4, p: int = 6, q: int = 2, n: int = 60, seed: int = 0):
    """Clients in two groups per row (rows 0-2: clients {0, 1} vs {2, 3}; rows 3-5 zero)."""
    from fedad.rowfed.problem import Client

    rng = np.random.default_rng(seed)
    truth = np.zeros((m, p, q))
    for j in range(3):
        a = rng.normal(size=q)
        a *= 2 / np.linalg.norm(a)  # the groups' rows 4 apart: well beyond the fusion's reach
        truth[: m // 2, j], truth[m // 2:, j] = a, -a
    clients = []
    for k in range(m):
        x = rng.normal(size=(n, p))
        clients.append(Client(x, x @ truth[k] + 0.1 * rng.normal(size=(n, q))))
    return clients, truth


def test_admm_reaches_a_stationary_point_on_a_tiny_problem():
    from fedad.rowfed.admm import kkt_residual, row_clusters, solve
    from fedad.rowfed.config import fpfc

    clients, truth = toy_problem()
    cfg = fpfc(rounds=3000, fusion_lam=0.6, sparsity_lam=0.05)
    state = solve(clients, cfg, tol=1e-9)
    assert kkt_residual(clients, state, cfg) < 1e-4
    labels = row_clusters(state, cfg.cluster_tol)
    assert [len(set(row)) for row in labels[:3]] == [2, 2, 2]  # the two groups found
    assert np.abs(state.b - truth).max() < 0.2


def test_no_fusion_is_nonfed_and_a_huge_fusion_shares_every_row():
    from fedad.rowfed.admm import solve
    from fedad.rowfed.baselines import nonfed
    from fedad.rowfed.config import fpfc

    clients, _ = toy_problem()
    alone = nonfed(clients, fpfc())
    free = solve(clients, fpfc(fusion_lam=0.0, rounds=3000), tol=1e-10)
    assert np.abs(free.b - alone).max() < 1e-5
    shared = solve(clients, fpfc(fusion_lam=1e4, rounds=3000), tol=1e-10)
    assert np.abs(shared.b - shared.b[0]).max() < 1e-4  # one B for all
    assert np.abs(shared.b - alone).max() > 0.5  # and not anyone's own


@pytest.mark.parametrize("fusion", ["matrix", "entry"])
def test_a_fused_baseline_fuses_at_the_grids_largest_weight(fusion):
    """The matrix- and entry-wise baselines move away from NonFed's fits: before the fusion
    weight was scaled by the group's size (:func:`fedad.rowfed.admm.group_weight`), a
    whole matrix's difference lay beyond SCAD's ``a * lambda`` at every weight of the
    benchmark's grid and the matrix baseline stopped after one round with NonFed's fit."""
    from fedad.rowfed.admm import group_weight, solve
    from fedad.rowfed.baselines import nonfed
    from fedad.rowfed.config import fpfc

    assert group_weight("row", 12, 2) == 1.0
    assert group_weight("matrix", 12, 2) == pytest.approx(12 ** 0.5)
    assert group_weight("entry", 12, 2) == pytest.approx(2 ** -0.5)
    # the benchmark's kind of problem: every row splits the clients its own way, so every
    # two clients' matrices differ by far more than SCAD's a * lambda at lambda 1.2 (4.4)
    from fedad.rowfed.problem import Client

    rng = np.random.default_rng(0)
    m, p, q = 4, 12, 2
    truth = np.zeros((m, p, q))
    for j in range(p):
        a = rng.normal(size=q)
        a *= 2 / np.linalg.norm(a)
        side = rng.permutation(m) < m // 2
        truth[side, j], truth[~side, j] = a, -a
    clients = []
    for k in range(m):
        x = rng.normal(size=(60, p))
        clients.append(Client(x, x @ truth[k] + 0.1 * rng.normal(size=(60, q))))
    assert min(np.linalg.norm(truth[i] - truth[k]) for i in range(m)
               for k in range(i + 1, m)) > 3.7 * 1.2 * 2
    cfg = fpfc(fusion=fusion, fusion_lam=1.2, sparsity_lam=0.05, rounds=300)
    alone = nonfed(clients, cfg)
    state = solve(clients, cfg, tol=1e-6)
    assert len(state.history) > 1, "stopped after one round"
    assert np.abs(state.b - alone).max() > 1e-2, "NonFed's fits, unfused"


def test_the_admm_starts_from_each_clients_own_fit_or_from_zero():
    from fedad.rowfed.admm import initial_state, solve
    from fedad.rowfed.baselines import nonfed
    from fedad.rowfed.config import fpfc

    clients, _ = toy_problem()
    cfg = fpfc(sparsity_lam=0.05)
    alone = nonfed(clients, cfg)
    start = initial_state(clients, cfg)
    assert np.array_equal(start.b, alone) and np.abs(alone).max() > 0.5
    i, k = start.pairs.T
    assert np.array_equal(start.theta, alone[i] - alone[k]) and not start.v.any()
    zero = initial_state(clients, fpfc(init="zero"))
    assert not zero.b.any() and not zero.theta.any()
    with pytest.raises(ValueError, match="rowfed.init"):
        solve(clients, fpfc(init="random"))


def test_the_batched_client_steps_are_each_clients_own_steps():
    from fedad.rowfed.admm import client_step, client_steps
    from fedad.rowfed.config import fpfc

    clients, _ = toy_problem()
    rng = np.random.default_rng(3)
    b, target = rng.normal(size=(2, 4, 6, 2))
    cfg = fpfc(sparsity_lam=0.2)
    one = np.stack([client_step(c, b[m], target[m], 3.0, cfg) for m, c in enumerate(clients)])
    assert np.abs(client_steps(clients, b, target, 3.0, cfg) - one).max() < 1e-12
    assert np.abs(one - b).max() > 0.01  # the steps moved


def test_absent_clients_keep_their_coefficients():
    from fedad.rowfed.admm import RowFedState, run_round
    from fedad.rowfed.config import fpfc

    clients, _ = toy_problem()
    cfg = fpfc(participation=0.5, seed=1)
    state = RowFedState.start(4, 6, 2)
    state.b += 1.0
    before = state.b.copy()
    who = run_round(clients, state, cfg)
    absent = sorted(set(range(4)) - set(who.tolist()))
    assert 0 < len(who) < 4
    assert all(np.array_equal(state.b[c], before[c]) for c in absent)
    assert all(not np.array_equal(state.b[c], before[c]) for c in who)


# -- RowFed as a personalised exchange of FedDyMem's projection ---------------------------
def rowfed_server(**changes):
    from fedad.detectors.base import FeatureShape
    from fedad.detectors.registry import create, exchange_for, resolve
    from tests.test_detectors import tiny_cfg

    cfg = tiny_cfg("feddymem")
    cfg.exchange, cfg.num_clients = "rowfed", 3
    for k, v in changes.items():
        setattr(cfg.rowfed, k, v)
    cfg = resolve(cfg)
    shape = FeatureShape(12, 4, 4)
    server = exchange_for(cfg, create(cfg, shape, "cpu", seed=0))
    server.check()
    server.start()
    return cfg, shape, server


def upload_with(server, key: int, matrix: np.ndarray):
    from fedad.exchanges.base import Upload
    from fedad.exchanges.rowfed import from_matrix
    from fedad.exchanges.weights import WEIGHTS

    name = server.param()
    weights = dict(server.payload(key, 1)[WEIGHTS])
    weights[name] = from_matrix(matrix, weights[name].shape, weights[name].dtype)
    return Upload(key, key, {WEIGHTS: weights}, 10)


def test_each_site_gets_its_own_matrix_and_an_absent_site_keeps_its_own():
    from fedad.exchanges.rowfed import TARGET, to_matrix
    from fedad.exchanges.weights import WEIGHTS

    cfg, _, server = rowfed_server(fusion_lam=0.01)
    name = server.param()
    rng = np.random.default_rng(0)
    mats = {k: rng.normal(size=(12, 12)) for k in (7, 8, 9)}
    server.aggregate([upload_with(server, k, mats[k]) for k in (7, 8, 9)], 1)
    own = {k: to_matrix(server.payload(k, 2)[WEIGHTS][name]) for k in (7, 8, 9)}
    assert all(np.allclose(own[k], mats[k], atol=1e-6) for k in own)  # personalised
    # round 2: only site 7 trains; 8 and 9 keep theirs
    server.aggregate([upload_with(server, 7, mats[7] + 1.0)], 2)
    assert np.allclose(to_matrix(server.payload(8, 3)[WEIGHTS][name]), mats[8], atol=1e-6)
    assert np.allclose(to_matrix(server.payload(7, 3)[WEIGHTS][name]), mats[7] + 1.0,
                       atol=1e-6)
    weight = server.payload(7, 3)[TARGET]["weight"]
    assert float(weight[0]) == cfg.rowfed.rho * 2  # rho (M - 1)


def test_the_fusion_weight_decides_which_rows_the_sites_share():
    rng = np.random.default_rng(1)
    mats = {k: rng.normal(size=(12, 12)) for k in (0, 1, 2)}
    mats[1][:6] = mats[0][:6]  # sites 0 and 1 share their first six rows
    for lam, fused in ((1e6, "all"), (0.5, "shared"), (0.0, "none")):
        _, _, server = rowfed_server(fusion_lam=lam)
        server.aggregate([upload_with(server, k, mats[k]) for k in mats], 1)
        labels = server.clusters()  # (rows, sites)
        if fused == "all":
            assert np.abs(server.admm.theta).max() == 0.0 and (labels == 0).all()
        elif fused == "shared":
            assert all(r[0] == r[1] != r[2] for r in labels[:6])
            assert all(len(set(r)) == 3 for r in labels[6:])
        else:  # theta = B_m - B_m' exactly
            d = server.admm.b[server.admm.pairs[:, 0]] - server.admm.b[server.admm.pairs[:, 1]]
            assert np.allclose(server.admm.theta, d)


def test_the_site_hooks_couple_to_the_target_and_sparsify_after_each_step():
    from fedad.components.training import step
    from fedad.detectors.registry import create
    from fedad.exchanges.rowfed import TARGET, to_matrix

    cfg, shape, server = rowfed_server(sparsity_lam=0.05, sparsity_penalty="l1")
    site = type(server)(cfg, create(cfg, shape, "cpu", seed=1))
    payload = server.payload(0, 1)
    payload[TARGET]["target"] = np.zeros_like(payload[TARGET]["target"])
    hooks = site.hooks({}, payload)
    module = site.detector.module()
    w = dict(module.named_parameters())[site.param()]
    coupling = hooks.objective(module, torch.zeros(()))
    assert float(coupling.detach()) == pytest.approx(0.5 * 2 * float(w.detach().pow(2).sum()),
                                                     rel=1e-5)
    # the prox's threshold is sparsity_lam x train.lr = 5e-5: below it zeroed, above shrunk
    with torch.no_grad():
        w.copy_(torch.full_like(w, 1e-5))
        w[0, 0] = 1.0
    opt = torch.optim.SGD(module.parameters(), lr=0.0)  # the step itself moves nothing
    step(module, opt, (w * 0).sum(), hooks)
    b = to_matrix(w.detach().numpy())
    assert b[0, 0] == pytest.approx(1.0 - 5e-5) and np.count_nonzero(b) == 1


def test_rowfed_refuses_what_it_cannot_personalise():
    from fedad.errors import ConfigError

    with pytest.raises(ConfigError, match="not a parameter"):
        rowfed_server(param="projection.nothing")
    with pytest.raises(ConfigError, match="needs a matrix"):
        rowfed_server(param="projection.conv.bias")
    with pytest.raises(ValueError, match="SCAD"):
        rowfed_server(rho=0.1)  # rho (a - 1) < 1: the fusion prox is not unique


def test_rowfed_personalises_feddymems_projection_on_the_engine_with_partial_participation(
        tmp_path):
    """Two rounds on the engine (the in-process transport carries the same messages as
    Flower's; partial participation through Flower is tests/test_trainable.py's), each site
    joining a round with probability 0.5: every site is scored and the sites end with
    projections of their own (the rest of the head averaged)."""
    from fedad.config.schema import RunConfig
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = RunConfig(detector="feddymem", exchange="rowfed", num_clients=3, examples=0)
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 4, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 64
    cfg.train.rounds, cfg.train.participation, cfg.rowfed.fusion_lam = 2, 0.5, 0.01
    transport = InProcess(cfg, partition_nodes(cfg))
    server = federate(cfg, transport, transport.keys, tmp_path / "run")
    asked = [r["train"].get("participants") for r in server.history]
    assert all(a is None or 1 <= len(a) < 3 for a in asked)
    assert set(server.history[-1]["evaluate"]["per_client"]) == {"0", "1", "2"}
    run = tmp_path / "run"
    states = [torch.load(run / f"site-{i}" / "state.pt", weights_only=True) for i in range(3)]
    key = next(k for k in states[0] if k.endswith("projection.conv.weight"))
    assert not torch.equal(states[0][key], states[1][key])  # personalised
