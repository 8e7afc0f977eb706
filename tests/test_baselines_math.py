"""Math of the weight-exchanging baselines: FedAvg, FedProx, SCAFFOLD (option II), FedBN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedad.components.states import weighted_mean
from fedad.detectors.feddymem.config import HeadConfig
from fedad.detectors.feddymem.head import FedDyMemHead
from fedad.exchanges.fedbn import batchnorm_keys, merge_state, split_state
from fedad.exchanges.fedprox import proximal_term
from fedad.exchanges.scaffold import (
    client_control_update,
    correct_gradients,
    server_update,
    zeros_like_state,
)

# ---- FedAvg ---------------------------------------------------------------------------------


def test_weighted_mean_known_answer_and_dtypes():
    a = {"w": torch.tensor([0.0, 4.0]), "h": torch.tensor([1.0, 2.0], dtype=torch.float16),
         "n": torch.tensor(10)}
    b = {"w": torch.tensor([4.0, 8.0]), "h": torch.tensor([3.0, 6.0], dtype=torch.float16),
         "n": torch.tensor(23)}
    out = weighted_mean([a, b], [1, 3])  # 0.25 * a + 0.75 * b
    assert list(out) == ["w", "h", "n"]
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 7.0]))
    assert out["h"].dtype == torch.float16
    torch.testing.assert_close(out["h"], torch.tensor([2.5, 5.0], dtype=torch.float16))
    assert out["n"].dtype == torch.int64 and out["n"].item() == 20  # rounds 2.5 + 17.25
    # a zero weight drops that state; a single state comes back unchanged
    torch.testing.assert_close(weighted_mean([a, b], [0, 2])["w"], b["w"])
    torch.testing.assert_close(weighted_mean([a], [5.0])["w"], a["w"])


def test_weighted_mean_sums_in_float64():
    # in float32, 1 + 1e-8 == 1; the float64 sum keeps the small contributions exact enough
    big = {"w": torch.tensor([1e8], dtype=torch.float32)}
    small = {"w": torch.tensor([0.0], dtype=torch.float32)}
    out = weighted_mean([big] + [small] * 3, [1e-8, 1.0, 1.0, 1.0])
    torch.testing.assert_close(out["w"], torch.tensor([1.0 / 3.0]), rtol=1e-6, atol=0)


def test_weighted_mean_is_detached_and_leaves_inputs_alone():
    p = nn.Parameter(torch.ones(2))
    states = [{"p": p}, {"p": torch.zeros(2)}]
    out = weighted_mean(states, [1, 1])
    assert not out["p"].requires_grad
    out["p"].add_(100)
    torch.testing.assert_close(p.detach(), torch.ones(2))


@pytest.mark.parametrize("states, weights, match", [
    ([], [], "no state"),
    ([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1, 1], "'a'"),
    ([{"a": torch.zeros(1)}, {"a": torch.zeros(1), "extra": torch.zeros(1)}], [1, 1],
     "'extra'"),
    ([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}], [1, 1], "'a'.*shape"),
    ([{"a": torch.zeros(1)}, {"a": torch.zeros(1)}], [0, 0], "total weight"),
    ([{"a": torch.zeros(1)}, {"a": torch.zeros(1)}], [2, -1], "weight 1"),
    ([{"a": torch.zeros(1)}, {"a": torch.zeros(1)}], [1], "2 states but 1 weights"),
])
def test_weighted_mean_errors_name_the_problem(states, weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_mean(states, weights)


# ---- FedProx --------------------------------------------------------------------------------


def test_proximal_term_value_and_gradient():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    frozen = nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    only_local = nn.Parameter(torch.tensor([7.0]))
    w_g = torch.tensor([0.5, 0.0, 3.0])
    mu = 0.3
    named = [("w", w), ("frozen", frozen), ("only_local", only_local)]
    term = proximal_term(named, {"w": w_g, "frozen": torch.zeros(1)}, mu)
    expected = mu / 2 * ((w.detach() - w_g) ** 2).sum()
    torch.testing.assert_close(term, expected)
    term.backward()
    torch.testing.assert_close(w.grad, mu * (w.detach() - w_g))
    assert only_local.grad is None  # not in global_params: no proximal pull


def test_proximal_term_zero_mu_and_errors():
    w = nn.Parameter(torch.ones(2))
    zero = proximal_term([("w", w)], {"w": torch.zeros(2)}, 0.0)
    assert zero.shape == () and zero.item() == 0.0
    with pytest.raises(ValueError, match="mu"):
        proximal_term([("w", w)], {"w": torch.zeros(2)}, -1.0)
    with pytest.raises(ValueError, match="'w'"):
        proximal_term([("w", w)], {"w": torch.zeros(3)}, 1.0)


def _fedprox_sgd(mu: float, steps: int = 20, lr: float = 1.5e-4) -> torch.Tensor:
    """SGD on ``0.5 ||w - target||^2 + prox`` from ``w = w_g = 0``; target far away."""
    w_g = torch.zeros(3)
    target = torch.full((3,), 50.0)
    w = nn.Parameter(w_g.clone())
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((w - target) ** 2).sum() + proximal_term([("w", w)], {"w": w_g}, mu)
        loss.backward()
        opt.step()
    return (w.detach() - w_g).abs().max()


def test_large_mu_pins_weights_to_global_model():
    assert _fedprox_sgd(mu=0.0) > 0.1
    assert _fedprox_sgd(mu=1e4) < 1e-2


# ---- SCAFFOLD -------------------------------------------------------------------------------

A = [torch.tensor([1.0, -2.0]), torch.tensor([-3.0, 4.0])]  # client optima of 0.5||w - a_i||^2


def _local_scaffold(x, a, c_local, c_global, steps, lr, curvature=1.0, grads=None):
    """K local SGD steps on ``0.5 * s * ||w - a||^2`` with SCAFFOLD's corrected gradient."""
    w = nn.Parameter(x.clone())
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * ((w - a) ** 2).sum()).backward()
        correct_gradients([("w", w)], {"w": c_local}, {"w": c_global})
        if grads is not None:
            grads.append(w.grad.clone())
        opt.step()
    return w.detach()


def test_correct_gradients_and_option_ii_by_hand():
    x = torch.tensor([0.5, 0.5])
    c_i = torch.tensor([0.2, -0.1])
    c = torch.tensor([-0.4, 0.3])
    steps, lr = 4, 0.1
    y = _local_scaffold(x, A[0], c_i, c, steps, lr)
    # the same steps by hand: y <- y - lr * (grad f_i(y) - c_i + c)
    y_hand, raw_grads = x.clone(), []
    for _ in range(steps):
        raw_grads.append(y_hand - A[0])
        y_hand = y_hand - lr * ((y_hand - A[0]) - c_i + c)
    torch.testing.assert_close(y, y_hand)

    c_new, delta_c, delta_y = client_control_update({"w": c_i}, {"w": c}, {"w": x}, {"w": y},
                                                    steps, lr)
    expected = c_i - c + (x - y) / (steps * lr)
    torch.testing.assert_close(c_new["w"], expected)
    torch.testing.assert_close(delta_c["w"], expected - c_i)
    torch.testing.assert_close(delta_y["w"], y - x)
    # option II's meaning: c_i+ is the mean of the uncorrected local gradients along the path
    torch.testing.assert_close(c_new["w"], torch.stack(raw_grads).mean(0))


def test_correct_gradients_skips_params_without_grad_and_needs_control_variates():
    w = nn.Parameter(torch.zeros(2))
    unused = nn.Parameter(torch.zeros(2))
    w.grad = torch.ones(2)
    correct_gradients([("w", w), ("unused", unused)], {"w": torch.full((2,), 3.0)},
                      {"w": torch.full((2,), 5.0)})
    torch.testing.assert_close(w.grad, torch.full((2,), 3.0))  # 1 + 5 - 3
    assert unused.grad is None
    with pytest.raises(ValueError, match="'w'"):
        correct_gradients([("w", w)], {}, {"w": torch.zeros(2)})


def test_client_control_update_rejects_bad_steps_and_lr():
    s = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="steps"):
        client_control_update(s, s, s, s, steps=0, lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        client_control_update(s, s, s, s, steps=1, lr=0.0)


def test_server_update_known_numbers():
    x = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}
    c = {"w": torch.tensor([0.0, 1.0])}
    delta_ys = [{"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(1)},
                {"w": torch.tensor([3.0, -1.0]), "n": torch.tensor(3)}]
    delta_cs = [{"w": torch.tensor([2.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}]
    x_new, c_new = server_update(x, c, delta_ys, delta_cs, num_clients=4, global_lr=0.5)
    torch.testing.assert_close(x_new["w"], torch.tensor([2.0, 2.0]))  # x + 0.5 * [2, 0]
    assert x_new["n"].dtype == torch.int64 and x_new["n"].item() == 5  # 4 + round(0.5 * 2)
    torch.testing.assert_close(c_new["w"], torch.tensor([1.5, 2.0]))  # c + [6, 4] / 4
    torch.testing.assert_close(x["w"], torch.tensor([1.0, 2.0]))  # inputs untouched
    with pytest.raises(ValueError, match="num_clients"):
        server_update(x, c, delta_ys, delta_cs, num_clients=1)
    with pytest.raises(ValueError, match="2 model deltas but 1"):
        server_update(x, c, delta_ys, delta_cs[:1], num_clients=4)


def test_exact_control_variates_make_a_round_centralized_gd():
    x = torch.tensor([2.0, 2.0])
    a_bar = torch.stack(A).mean(0)
    steps, lr = 5, 0.2
    c_locals = [x - a for a in A]  # true local gradients at x
    c = torch.stack(c_locals).mean(0)  # = grad f(x), the full gradient
    ys, grads = [], []
    for a, c_i in zip(A, c_locals, strict=True):
        g: list[torch.Tensor] = []
        ys.append(_local_scaffold(x, a, c_i, c, steps, lr, grads=g))
        grads.append(g)
    # centralized GD on f = mean_i f_i from x
    central, central_grads = x.clone(), []
    for _ in range(steps):
        central_grads.append(central - a_bar)
        central = central - lr * (central - a_bar)
    for y, g in zip(ys, grads, strict=True):
        for got, want in zip(g, central_grads, strict=True):
            torch.testing.assert_close(got, want)  # corrected local grad == full grad
        torch.testing.assert_close(y, central)
    updates = [client_control_update({"w": ci}, {"w": c}, {"w": x}, {"w": y}, steps, lr)
               for ci, y in zip(c_locals, ys, strict=True)]
    x_new, _ = server_update({"w": x}, {"w": c}, [u[2] for u in updates],
                             [u[1] for u in updates], num_clients=2)
    torch.testing.assert_close(x_new["w"], central)
    assert (x_new["w"] - a_bar).norm() < (x - a_bar).norm()


def test_scaffold_removes_client_drift_that_fedavg_keeps():
    # different curvatures: FedAvg with many local steps converges to a biased point
    curv = [1.0, 4.0]
    optimum = sum(s * a for s, a in zip(curv, A, strict=True)) / sum(curv)
    steps, lr, rounds = 10, 0.1, 150

    def run(scaffold: bool) -> torch.Tensor:
        x = {"w": torch.zeros(2)}
        c = zeros_like_state(x)
        c_locals = [zeros_like_state(x) for _ in A]
        for _ in range(rounds):
            dys, dcs = [], []
            for i, (a, s) in enumerate(zip(A, curv, strict=True)):
                ci = c_locals[i] if scaffold else zeros_like_state(x)
                cg = c if scaffold else zeros_like_state(x)
                y = _local_scaffold(x["w"], a, ci["w"], cg["w"], steps, lr, curvature=s)
                c_locals[i], dc, dy = client_control_update(ci, cg, x, {"w": y}, steps, lr)
                dys.append(dy)
                dcs.append(dc)
            x, c_new = server_update(x, c, dys, dcs, num_clients=len(A))
            c = c_new if scaffold else c
        return x["w"]

    assert (run(scaffold=True) - optimum).norm() < 1e-4
    assert (run(scaffold=False) - optimum).norm() > 0.1


def test_zeros_like_state():
    z = zeros_like_state({"a": torch.ones(2, 3), "n": torch.tensor(7)})
    assert z["a"].shape == (2, 3) and z["a"].abs().sum() == 0 and z["n"].item() == 0


# ---- FedBN ----------------------------------------------------------------------------------

BN_KEYS = {f"projection.norm.{k}" for k in
           ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _head(seed: int, batch_norm: bool = True) -> FedDyMemHead:
    torch.manual_seed(seed)
    return FedDyMemHead(8, HeadConfig(batch_norm=batch_norm, grid_size=4, phi_hidden=8))


def test_batchnorm_keys_of_the_head():
    head = _head(0)
    assert batchnorm_keys(head) == BN_KEYS
    assert BN_KEYS < set(head.state_dict())
    assert batchnorm_keys(_head(0, batch_norm=False)) == set()
    assert batchnorm_keys(nn.BatchNorm1d(3)) == {"weight", "bias", "running_mean",
                                                 "running_var", "num_batches_tracked"}


def test_split_merge_round_trip_and_fedbn_round():
    heads = [_head(0), _head(1)]
    for scale, h in enumerate(heads, start=1):  # each client gets its own BN state
        with torch.no_grad():
            h.projection.norm.weight.uniform_(0.5, 1.5)
            h.projection.norm.bias.uniform_(-0.5, 0.5)
        h.train()
        h(torch.randn(2, 8, 6, 6) * scale + scale)
    keys = batchnorm_keys(heads[0])
    sd = heads[0].state_dict()
    shared, local = split_state(sd, keys)
    assert set(local) == BN_KEYS and not (set(shared) & BN_KEYS)
    assert set(shared) | set(local) == set(sd)
    merged = merge_state(shared, local)
    assert set(merged) == set(sd)
    for k in sd:
        assert torch.equal(merged[k], sd[k])

    # one FedBN round: average the shared part, keep each client's BN
    splits = [split_state({k: v.clone() for k, v in h.state_dict().items()}, keys)
              for h in heads]
    avg = weighted_mean([s for s, _ in splits], [1, 1])
    for h, (_, loc) in zip(heads, splits, strict=True):
        h.load_state_dict(merge_state(avg, loc))
    s0, s1 = heads[0].state_dict(), heads[1].state_dict()
    assert torch.equal(s0["projection.conv.weight"], s1["projection.conv.weight"])
    torch.testing.assert_close(s0["generator.grid"], (splits[0][0]["generator.grid"]
                                                      + splits[1][0]["generator.grid"]) / 2)
    for k in BN_KEYS:  # BN exactly as each client had it
        assert torch.equal(s0[k], splits[0][1][k]) and torch.equal(s1[k], splits[1][1][k])
    assert not torch.equal(s0["projection.norm.weight"], s1["projection.norm.weight"])
    assert not torch.equal(s0["projection.norm.running_mean"], s1["projection.norm.running_mean"])

    with pytest.raises(ValueError, match="'nope'"):
        split_state(sd, {"nope"})
    with pytest.raises(ValueError, match="projection.norm.bias"):
        merge_state({**shared, "projection.norm.bias": torch.zeros(8)}, local)


def test_fedbn_refuses_a_model_without_batchnorm():
    """FedBN on a head without BatchNorm would silently be FedAvg: refused when the config
    is composed (registry.check) and by the exchange itself, naming the fix."""
    from fedad.config.schema import RunConfig
    from fedad.detectors.base import FeatureShape
    from fedad.detectors.feddymem.config import HeadConfig
    from fedad.detectors.registry import create, exchange_for, resolve
    from fedad.errors import ConfigError
    from fedad.federation.compose import check

    with pytest.raises(ConfigError, match="head.batch_norm=true"):
        check(RunConfig(method="fedbn"))
    check(RunConfig(method="fedbn", head=HeadConfig(batch_norm=True)))  # accepted
    cfg = resolve(RunConfig(method="fedbn", head=HeadConfig(grid_size=4)))
    exchange = exchange_for(cfg, create(cfg, FeatureShape(8, 4, 4)))
    with pytest.raises(ConfigError, match="has none"):
        exchange.keys()
