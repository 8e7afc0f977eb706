"""A trained detector and a personalised exchange added as a contributor would (one folder,
one registry line each: tests/toy_trainable/, named in ``plugins``), run through Flower's
simulation runtime with no edit to clients/, server/ or the engine (fedad/federation/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedad.cli.sim import launch
from tests.test_simulation import tiny_sim

PLUGIN = "tests.toy_trainable"


def site_weights(run: Path, site: int) -> dict[str, torch.Tensor]:
    return torch.load(run / f"site-{site}" / "state.pt", weights_only=True)


@pytest.mark.slow
# fedavg and scaffold run a registered trained detector through Flower in
# tests/test_asymst.py; the plugin runs the others
@pytest.mark.parametrize("exchange", ["fedprox", "toypersonal"])
def test_a_new_trained_detector_runs_every_weight_exchange_through_flower(
        tmp_path: Path, exchange: str):
    # the personalised run also has partial participation: each site joins a round with
    # probability 0.5 (at least one does), every site is scored
    extra = {"train.participation": 0.5} if exchange == "toypersonal" else {}
    sim = tiny_sim(detector="toyae", exchange=exchange, plugins=[PLUGIN], examples=0, **extra)
    out = tmp_path / "out"
    assert launch(sim, out) == 0
    (run,) = list(out.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2] and not result["rejected"]
    assert result["label"] == f"toyae+{exchange}"
    asked = [r["train"].get("participants") for r in result["rounds"]]
    if extra:
        assert all(1 <= len(a) <= 3 and r["train"]["clients"] == len(a)
                   for a, r in zip(asked, result["rounds"], strict=True))
        assert any(len(a) < 3 for a in asked)
    else:
        assert asked == [None, None]  # every site, every round
    assert set(result["final"]["per_client"]) == {"0", "1", "2"}
    assert all(0.0 <= v["i_auroc"] <= 1.0 for v in result["final"]["per_client"].values())
    assert result["received_keys"][0] == ["decode.bias", "decode.weight", "encode.0.bias",
                                          "encode.0.weight"]
    states = [site_weights(run, i) for i in range(3)]
    net = [k for k in states[0] if k.startswith("net.")]  # the weights (not Adam's moments)
    assert len(net) == 4
    same = all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in net)
    # a shared global model is what every site scores with; a personalised exchange sends
    # each site its own
    assert same == (exchange != "toypersonal")
