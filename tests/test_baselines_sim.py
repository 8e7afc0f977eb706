"""Every weight-exchanging baseline for 2 rounds through Flower's real simulation runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedad.baselines.client import WeightClient, exchanged_keys
from fedad.cli.sim import launch
from fedad.config import HeadConfig, RunConfig
from tests.test_simulation import tiny_sim

BN = "projection.norm."


@pytest.mark.slow
# local and fedprox share fedavg's client and server paths except for what is tested
# without Flower below and in tests/test_server_strategy.py (no payload; the mu message):
# every Flower run costs ~45 s of the suite's 10 minutes
@pytest.mark.parametrize("method", ["fedavg", "scaffold", "fedbn"])
def test_two_rounds_through_flower(tmp_path: Path, method: str):
    sim = tiny_sim(method=method, **{"head.batch_norm": True})
    assert launch(sim, tmp_path) == 0
    (run,) = list(tmp_path.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert set(result["final"]["per_client"]) == {"0", "1", "2"} and not result["rejected"]
    up = result["rounds"][-1]["bytes"]["received_per_client"]
    keys = (result["received_keys"] or [[]])[0]
    if method == "local":
        assert up == 0 and not keys  # nothing leaves a Local client
    else:
        assert up > 0 and "generator.grid" in keys
        assert any(k.startswith(BN) for k in keys) == (method != "fedbn")  # real payload keys
    if method == "scaffold":
        sent = result["rounds"][-1]["bytes"]["sent"]
        fedavg_like = 3 * up  # weights alone to 3 clients would be this; SCAFFOLD adds cv
        assert sent > 1.5 * fedavg_like


def test_fedbn_keeps_batchnorm_local_and_clients_diverge():
    import torch

    cfg = RunConfig(method="fedbn", head=HeadConfig(batch_norm=True, grid_size=4,
                                                    phi_hidden=8))
    cfg.train.batch_size = 4
    head_keys = exchanged_keys(WeightClient(8, cfg).model.head, "fedbn")
    assert not any(k.startswith(BN) for k in head_keys)
    g = torch.Generator().manual_seed(0)
    a, b = WeightClient(8, cfg, seed=0), WeightClient(8, cfg, seed=0)
    shared = a.weights()
    feats_a = torch.randn(8, 8, 4, 4, generator=g)
    feats_b = 5 + 3 * torch.randn(8, 8, 4, 4, generator=g)
    a.train_round(feats_a, shared)
    b.train_round(feats_b, shared)
    sa, sb = a.model.head.state_dict(), b.model.head.state_dict()
    assert not torch.allclose(sa[BN + "running_mean"], sb[BN + "running_mean"])
    # after loading the same global weights, BatchNorm stays each client's own
    a.load_weights(shared)
    b.load_weights(shared)
    assert not torch.allclose(a.model.head.state_dict()[BN + "running_mean"],
                              b.model.head.state_dict()[BN + "running_mean"])


def test_fedprox_with_huge_mu_stays_at_the_global_weights():
    import torch

    def moved(method: str, mu: float) -> float:
        cfg = RunConfig(method=method, head=HeadConfig(grid_size=4, phi_hidden=8))
        cfg.train.batch_size, cfg.train.local_epochs, cfg.train.proximal_mu = 4, 10, mu
        cfg.train.optimizer, cfg.train.lr = "sgd", 1e-2
        client = WeightClient(8, cfg, seed=0)
        start = client.weights()
        feats = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(1))
        client.train_round(feats, start)
        end = client.weights()
        return max(float((end[k] - start[k]).abs().max()) for k in start)

    free, pinned = moved("fedavg", 0.0), moved("fedprox", 100.0)  # lr * mu = 1
    assert free > 1e-4
    assert pinned < free / 10


def test_a_local_client_sends_nothing_and_fedprox_pulls_towards_the_global_model():
    """What the Flower runs of local and fedprox showed, without Flower: a Local round
    returns no weights; a FedProx round with a large mu stays near the global model where
    FedAvg's moves away."""
    import torch

    from fedad.detectors.base import FeatureShape
    from tests.test_detectors import features

    x = features(6, 0, FeatureShape(8, 4, 4))
    head = HeadConfig(grid_size=4, phi_hidden=8)
    local = WeightClient(8, RunConfig(method="local", head=head), seed=1)
    assert local.train_round(x).weights is None
    moved = {}
    for method, mu in (("fedavg", 0.0), ("fedprox", 50.0)):
        cfg = RunConfig(method=method, head=head)
        # plain SGD, 10 epochs: lr * mu = 0.5 contracts towards the global model each step
        cfg.train.proximal_mu, cfg.train.lr, cfg.train.optimizer = mu, 0.01, "sgd"
        cfg.train.local_epochs = 10
        client = WeightClient(8, cfg, seed=1)
        start = client.weights()
        after = client.train_round(x, start).weights
        moved[method] = max(float((after[k] - start[k]).abs().max()) for k in start)
    assert moved["fedprox"] < 0.5 * moved["fedavg"] and moved["fedavg"] > 0  # measured 0.2
    assert torch.is_tensor(after[next(iter(after))])
