"""RowFed's penalties and proximal operators (fedad/rowfed) against brute force."""

from __future__ import annotations

import numpy as np
import pytest

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
    from fedad.rowfed.admm import RowFedConfig, kkt_residual, row_clusters, solve

    clients, truth = toy_problem()
    cfg = RowFedConfig(rounds=3000, fusion_lam=0.6, sparsity_lam=0.05)
    state = solve(clients, cfg, tol=1e-9)
    assert kkt_residual(clients, state, cfg) < 1e-4
    labels = row_clusters(state, cfg.cluster_tol)
    assert [len(set(row)) for row in labels[:3]] == [2, 2, 2]  # the two groups found
    assert np.abs(state.b - truth).max() < 0.2


def test_no_fusion_is_nonfed_and_a_huge_fusion_shares_every_row():
    from fedad.rowfed.admm import RowFedConfig, solve
    from fedad.rowfed.baselines import nonfed

    clients, _ = toy_problem()
    alone = nonfed(clients, RowFedConfig())
    free = solve(clients, RowFedConfig(fusion_lam=0.0, rounds=3000), tol=1e-10)
    assert np.abs(free.b - alone).max() < 1e-5
    shared = solve(clients, RowFedConfig(fusion_lam=1e4, rounds=3000), tol=1e-10)
    assert np.abs(shared.b - shared.b[0]).max() < 1e-4  # one B for all
    assert np.abs(shared.b - alone).max() > 0.5  # and not anyone's own


def test_absent_clients_keep_their_coefficients():
    from fedad.rowfed.admm import RowFedConfig, RowFedState, run_round

    clients, _ = toy_problem()
    cfg = RowFedConfig(participation=0.5, seed=1)
    state = RowFedState.start(4, 6, 2)
    state.b += 1.0
    before = state.b.copy()
    who = run_round(clients, state, cfg)
    absent = sorted(set(range(4)) - set(who.tolist()))
    assert 0 < len(who) < 4
    assert all(np.array_equal(state.b[c], before[c]) for c in absent)
    assert all(not np.array_equal(state.b[c], before[c]) for c in who)
