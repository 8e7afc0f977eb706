"""A trained detector and exchanges added as a contributor would (one folder with the
detector's own config section, one registry line each: tests/toy_trainable/, named in
``plugins``), run through Flower's simulation runtime with no edit to
fedad/config/schema.py, clients/, server/ or the engine (fedad/federation/)."""

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


PERSONAL = ("fedphp", "toypersonal")  # each site scores with a model of its own


@pytest.mark.slow
# a shared and a personalised exchange through Flower (SCAFFOLD's site state goes through
# Flower in test_baselines.py, and on this toy in process below; FedPHP and every other
# built-in exchange run on the engine in test_exchanges.py's conformance tests: the
# ClientApp and ServerApp call that engine)
@pytest.mark.parametrize("exchange", ["fedavg", "toypersonal"])
def test_a_new_trained_detector_runs_weight_exchanges_through_flower(
        tmp_path: Path, exchange: str):
    # the toy's own section sets its code's width; the plugin's exchange also runs with
    # partial participation: each site joins a round with probability 0.5 (at least one
    # does), every site is scored
    extra = {"train.participation": 0.5} if exchange == "toypersonal" else {}
    sim = tiny_sim(detector="toyae", exchange=exchange, plugins=[PLUGIN], examples=0,
                   sections={"toyae": {"hidden": 6}}, **extra)
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
    # DBE's bias travels (zeros) as FedDyMem's does under every exchange but DBE
    assert result["received_keys"][0] == ["decode.bias", "decode.weight", "project.bias",
                                          "project.weight", "shift"]
    states = [site_weights(run, i) for i in range(3)]
    assert states[0]["net.project.weight"].shape[0] == 6  # sections.toyae.hidden
    net = [k for k in states[0] if k.startswith("net.") and k != "net.shift"]  # not Adam's
    assert len(net) == 4
    same = all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in net)
    # a shared global model is what every site scores with; a personalised exchange sends
    # each site its own
    assert same == (exchange not in PERSONAL)


def test_the_toys_section_is_checked_and_an_exchange_needing_what_it_lacks_is_refused():
    """The composed check reads the plug-in's own section (its keys, its ranges) and refuses
    a section nobody in the run declares; a toy exchange that requires a capability no
    detector declares is refused for the toy, naming the capability."""
    import tests.toy_trainable  # noqa: F401  (registers the toy detector and exchanges)
    from fedad.config.schema import RunConfig
    from fedad.errors import ConfigError
    from fedad.federation.compose import check

    def cfg(**changes) -> RunConfig:
        return RunConfig(detector="toyae", exchange="fedavg", plugins=[PLUGIN], **changes)

    check(cfg(sections={"toyae": {"hidden": 4, "lr": 0.01}}))
    with pytest.raises(ConfigError, match="sections.toyae.widht"):
        check(cfg(sections={"toyae": {"widht": 4}}))
    with pytest.raises(ConfigError, match="sections.toyae: hidden=0 must be >= 1"):
        check(cfg(sections={"toyae": {"hidden": 0}}))
    with pytest.raises(ConfigError, match="sections: padim2 not declared.*declare: toyae"):
        check(cfg(sections={"padim2": {"x": 1}}))
    with pytest.raises(ConfigError, match="exchange=toysketch requires Sketches \\(a sketch "
                                          "of its module\\), which detector=toyae does not "
                                          "declare"):
        check(RunConfig(detector="toyae", exchange="toysketch", plugins=[PLUGIN]))


def test_scaffolds_loss_falls_on_the_toy_detector(tmp_path: Path):
    """Four rounds of SCAFFOLD in process: plain SGD at scaffold.lr (its default, 0.01) on
    the toy's one part, not its Adam rate, and the training loss falls round over round
    (measured 13.88, 13.83, 13.76, 13.68)."""
    from fedad.config.flat import from_flat, to_flat
    from fedad.config.schema import RunConfig
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = RunConfig(detector="toyae", exchange="scaffold", plugins=[PLUGIN], num_clients=2,
                    examples=0)
    cfg = from_flat({**to_flat(cfg), "train.rounds": 4, "partition.min_samples": 1,
                     "dataset.texture_train_per_type": 6,
                     "dataset.texture_test_normal_per_type": 2,
                     "dataset.texture_test_anomalous_per_type": 2, "dataset.image_size": 64,
                     "train.local_epochs": 5})
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "rounds.json").read_text())
    losses = [r["train"]["loss"]["mean"] for r in result["rounds"]]
    assert len(losses) == 4 and not result["rejected"]
    assert all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)), losses
