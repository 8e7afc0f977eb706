"""Training measured in steps (fedad/components/budget.py, ema.py): the rounds a budget
takes, the learning-rate schedule, presets that fill only what a run leaves unset, the EMA
shadow, and the paper-scale presets composing and stepping on a CPU."""

from __future__ import annotations

import gc

import pytest
import torch

from fedad.components import ema
from fedad.components.budget import Stage, factor, mean_factor, plan
from fedad.config.flat import from_flat, to_flat
from fedad.detectors.asymst.detector import DDPM, HEAD, STUDENT
from fedad.detectors.registry import create, feature_shape, resolve
from fedad.errors import ConfigError


def test_a_budget_is_spent_local_steps_a_round_phase_by_phase():
    rounds = plan([Stage("a", 5), Stage("b", 0), Stage("c", 4)], 2)
    assert [(r.phase, r.first, r.steps, r.total) for r in rounds] == [
        ("a", 0, 2, 5), ("a", 2, 2, 5), ("a", 4, 1, 5), ("c", 0, 2, 4), ("c", 2, 2, 4)]
    with pytest.raises(ConfigError, match="local_steps"):
        plan([Stage("a", 5)], 0)


def test_the_schedule_warms_up_then_anneals():
    f = [factor(i, 100, 0.1, "cosine") for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True))
    assert f[-1] < 0.01
    s = [factor(i, 100, 0.0, "step") for i in (0, 79, 80, 90)]
    assert s == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.01)]
    assert factor(50, 100, 0.0, "constant") == 1.0
    rp = plan([Stage("a", 100)], 10)[9]
    assert mean_factor(rp, 0.1, "cosine") == pytest.approx(
        sum(f[90:]) / 10)
    with pytest.raises(ConfigError, match="schedule"):
        factor(0, 10, 0.0, "linear")


def test_a_preset_fills_only_what_the_run_leaves_unset_and_rounds_follow_the_budget():
    cfg = resolve(from_flat({"detector": "asymst", "exchange": "fedavg",
                             "asymst.student_steps": 75}))
    assert cfg.asymst.student_steps == 75  # the run's own value wins
    assert cfg.asymst.head_steps == 1000 and cfg.ddpm.steps == 300  # the cpu preset's
    assert cfg.train.rounds == 12 + 3 + 40  # ceil(steps / local_steps) per phase
    again = resolve(from_flat(to_flat(cfg)))
    assert to_flat(again) == to_flat(cfg)  # resolving is idempotent
    with pytest.raises(ConfigError, match="takes 55 rounds"):
        resolve(from_flat({"detector": "asymst", "exchange": "fedavg",
                           "asymst.student_steps": 75,
                           "train.rounds": 10}))
    assert resolve(from_flat({"detector": "padim"})).train.rounds == 10  # no budget


def test_the_ema_shadow_follows_the_weights_and_scores_inside_its_context():
    net = ema.attach(torch.nn.Linear(2, 1), 0.5)
    assert {k for k in net.state_dict()} == {"weight", "bias", "ema.weight", "ema.bias"}
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    assert torch.allclose(net.ema.weight, start + 1.0)  # half way
    with ema.shadow_weights(net):
        assert torch.allclose(net.weight, start + 1.0)
    assert torch.allclose(net.weight, start + 2.0)  # restored
    plain = ema.attach(torch.nn.Linear(2, 1), 0.0)
    assert "ema.weight" not in plain.state_dict()


@pytest.mark.parametrize("detector", ["asymst", "diffad"])
def test_the_paper_budget_composes_and_takes_one_step_of_each_phase(detector: str):
    """``budget=paper`` as written (model sizes, rates, EMA), then one optimiser step of
    every phase on 64-px images with batches of 2 (the paper's images and batches do not
    fit a test on 2 cores; its rounds are checked as composed)."""
    paper = resolve(from_flat({"detector": detector, "exchange": "fedavg",
                               "budget": "paper"}))
    assert paper.dataset.image_size == 256 and paper.ddpm.lr == 1e-4
    expect = {"asymst": (20000 + 1000 + 4000) // 100, "diffad": 10000 // 100}[detector]
    assert paper.train.rounds == expect
    small = {"dataset.image_size": 64, "ddpm.crop": 64, "ddpm.batch_size": 2,
             "train.batch_size": 2, "ddpm.steps": 1, "train.local_steps": 1,
             "asymst.student_steps": 1, "asymst.head_steps": 1, "asymst.pool": 1,
             "asymst.sample_steps": 1, "diffad.size": 64, "diffad.norm_images": 1}
    flat = {k: v for k, v in to_flat(paper).items() if k != "train.rounds"}
    cfg = resolve(from_flat({**flat, **small}))
    det = create(cfg, feature_shape(cfg), "cpu", seed=0)
    x = torch.randn(2, 3, 64, 64) * 0.5
    phases = {"asymst": [DDPM, STUDENT, HEAD], "diffad": ["network"]}[detector]
    assert cfg.train.rounds == len(phases)
    for r, _ in enumerate(phases, 1):
        info = det.fit(x, None, r)
        assert info.steps == 1 and torch.isfinite(torch.tensor(info.loss))
    del det
    gc.collect()
