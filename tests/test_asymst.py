"""The DDPM (fedad/diffusion), its defects and the asymmetric teacher-student detector
(fedad/detectors/asymst) on tiny images and tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig
from fedad.detectors.asymst.detector import DDPM, HEAD, STUDENT, phases
from fedad.detectors.asymst.synthesis import classical_defect
from fedad.detectors.base import FeatureShape
from fedad.detectors.registry import create, feature_shape, resolve
from fedad.diffusion.defects import GREY, paste, perlin_mask
from fedad.diffusion.loss import ddpm_loss
from fedad.diffusion.sample import ancestral_step
from fedad.diffusion.schedule import alphas_cumprod, respaced
from fedad.diffusion.unet import build_unet
from fedad.errors import ConfigError
from fedad.federation.compose import check
from fedad.federation.in_process import InProcess
from fedad.federation.records import TRAIN
from fedad.federation.run import federate, run_folder
from partitions import partition_nodes


def tiny(**changes) -> RunConfig:
    cfg = RunConfig(detector="asymst", exchange="fedavg", num_clients=2, examples=0)
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 6, 2
    d.texture_test_anomalous_per_type, d.image_size = 2, 64
    cfg.train.local_steps = 2  # one round per phase
    a = cfg.asymst
    a.student_steps, a.head_steps, a.pool, a.sample_steps = 2, 2, 2, 2
    a.student_width, a.head_channels, a.student_lr, a.head_lr = 8, 8, 1e-3, 1e-3
    cfg.ddpm.channels, cfg.ddpm.groups, cfg.ddpm.steps, cfg.ddpm.crop = [8, 16], 4, 2, 32
    cfg.ddpm.lr, cfg.ddpm.batch_size, cfg.ddpm.ema = 1e-3, 4, 0.0
    return from_flat({**to_flat(cfg), **changes}) if changes else cfg


def toy_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random ramps in [-1, 1]: an easy distribution for a DDPM to learn."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    a, b = torch.rand(2, n, 1, 1, generator=g) * 2 - 1
    img = (a * yy + b * xx).clamp(-1, 1)
    return img[:, None].expand(n, 3, size, size).contiguous()


def test_the_ddpm_loss_falls_on_a_toy_set():
    cfg = tiny().ddpm
    unet = build_unet(cfg, 3, seed=0)
    abar = alphas_cumprod(cfg)
    data = toy_images(64)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for i in range(40):
        batch = data[(torch.arange(16) + 16 * i) % 64]
        loss = ddpm_loss(unet, batch, abar, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_the_reverse_step_is_diffusers_ddpm_step_and_inflation_scales_its_noise():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    abar = sched.alphas_cumprod.double()
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = 400
    want = sched.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    got = ancestral_step(x, eps, float(abar[t]), float(abar[t - 1]), torch.zeros(2), z)
    assert torch.allclose(got, want, atol=1e-5)
    s = torch.tensor([0.0, 0.15])
    inflated = ancestral_step(x, eps, float(abar[t]), float(abar[t - 1]), s, z)
    var = (1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1])
    assert torch.allclose(inflated[0], got[0])
    assert torch.allclose(inflated[1] - got[1], ((1.15 ** 0.5 - 1) * var ** 0.5 * z[1]).float(),
                          atol=1e-5)
    assert respaced(999, 10)[0] == 999 and respaced(999, 10)[-1] == 0


def test_defects_cover_exactly_the_changed_pixels():
    rng = np.random.default_rng(0)
    image = toy_images(1, 64)[0]
    drawn = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for make in (lambda: paste(image, drawn, rng), lambda: classical_defect(image, rng)):
        for _ in range(3):
            out, mask = make()
            changed = (out != image).any(0)
            assert mask.any() and torch.equal(changed, mask)
            assert (out - image).abs().amax(0)[mask].min() >= GREY - 1e-6
            assert out.min() >= -1 and out.max() <= 1
    # toy_images are grey (equal channels): a coloured DDPM sample is pasted grey
    out, mask = paste(image, drawn, rng)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


def test_perlin_masks_are_seeded_and_large_enough():
    a = perlin_mask(64, np.random.default_rng(5), 0.01)
    b = perlin_mask(64, np.random.default_rng(5), 0.01)
    assert np.array_equal(a, b) and a.mean() >= 0.01
    assert not np.array_equal(a, perlin_mask(64, np.random.default_rng(6), 0.01))


def test_phases_and_their_rounds_are_checked_when_a_config_is_composed():
    assert phases(tiny()) == [DDPM, STUDENT, HEAD]
    assert phases(tiny(**{"asymst.synthesis": "cutpaste"})) == [STUDENT, HEAD]
    assert phases(tiny(**{"asymst.seg_head": False})) == [DDPM, STUDENT]
    assert phases(tiny(**{"asymst.head_steps": 5})) == [DDPM, STUDENT, HEAD, HEAD, HEAD]
    check(tiny())
    assert resolve(tiny()).train.rounds == 3  # train.rounds=0: the budget's
    with pytest.raises(ConfigError, match="takes 3 rounds"):
        check(tiny(**{"train.rounds": 2}))
    with pytest.raises(ConfigError, match="asymst.opacity"):
        check(tiny(**{"asymst.opacity": [0.9, 0.5]}))
    assert feature_shape(tiny()) == FeatureShape(3, 64, 64)  # it is handed pixels


def test_each_phase_trains_only_its_part_of_the_module():
    cfg = tiny()
    det = create(cfg, feature_shape(cfg), "cpu", seed=0)
    x = torch.randn(4, 3, 64, 64) * 0.5
    parts = {k: {n: v.clone() for n, v in det.module()[k].state_dict().items()}
             for k in (DDPM, STUDENT, HEAD)}
    for r, phase in enumerate(phases(cfg), 1):
        info = det.fit(x, None, r)
        assert info.steps > 0 and np.isfinite(info.loss)
        now = {k: det.module()[k].state_dict() for k in parts}
        changed = {k for k in parts if any(not torch.equal(parts[k][n], now[k][n])
                                           for n in parts[k])}
        assert changed == {phase}, (r, changed)
        parts = {k: {n: v.clone() for n, v in now[k].items()} for k in parts}
        if phase == STUDENT:
            assert det.pool is not None and det.pool.shape == (2, 3, 32, 32)  # ddpm.crop
    scores = det.score(x, {}, 64)
    assert scores.maps.shape == (4, 64, 64) and torch.isfinite(scores.image).all()


class Interrupted(RuntimeError):
    pass


class KilledInRound(InProcess):
    """The in-process transport, killed when round ``k``'s training is sent."""

    def __init__(self, cfg, nodes, k: int) -> None:
        super().__init__(cfg, nodes)
        self.k = k

    def send(self, kind, envelopes, timeout, desc):
        if kind == TRAIN and any(int(e.config.get("round", -1)) == self.k
                                 for e in envelopes.values()):
            raise Interrupted(desc)
        return super().send(kind, envelopes, timeout, desc)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path):
    """Killed before round 3 (the head's), resumed in fresh site stores (what a new process
    has): the sites come back from their checkpoints (weights, optimiser, DDPM pool) and
    every round's loss and the final metrics equal those of a run never stopped."""
    cfg = tiny()
    full = federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0, 1], tmp_path / "full")
    out = tmp_path / "killed"
    with pytest.raises(Interrupted):
        federate(cfg, KilledInRound(cfg, partition_nodes(cfg), 3), [0, 1], out)
    again = tiny(resume=str(out))
    folder, ckpt = run_folder(again, tmp_path, "x")
    resumed = federate(again, InProcess(again, partition_nodes(again)), [0, 1], folder, ckpt)
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["train"]["loss"] == b["train"]["loss"]
    assert resumed.history[-1]["evaluate"]["per_client"] == full.history[-1]["evaluate"][
        "per_client"]


TINY_ASYMST = {"train.local_steps": 2, "asymst.student_steps": 2, "asymst.seg_head": False,
               "asymst.pool": 2, "asymst.sample_steps": 2, "asymst.student_width": 8,
               "asymst.head_channels": 8, "ddpm.channels": [8, 16], "ddpm.groups": 4,
               "ddpm.steps": 2, "ddpm.crop": 32}


def check_global_run(result: dict, states: list[dict], exchange: str,
                     saved_global: bool) -> None:
    """Two rounds, the DDPM's then the student's: each uploads only the part it trains,
    every site trained, was scored with one global model and drew its own pool;
    ``saved_global``: the sites' saved states hold the global weights (Flower's runtime
    saves a site's state after the final evaluation too); SCAFFOLD sends its control
    variates beside the weights."""
    assert [r["round"] for r in result["rounds"]] == [1, 2] and not result["rejected"]
    assert result["label"] == f"asymst+{exchange}"
    # a round uploads only the part it trains (round 2: the student's 1.9 M weights, more
    # than the DDPM's 0.64 M of round 1 at full size; here tiny)
    keys = result["received_keys"][0]
    assert {k.split(".")[0] for k in keys} == {STUDENT}
    up = [r["bytes"]["received_per_client"] for r in result["rounds"]]
    assert up[0] != up[1]
    assert all("site-notes" not in r["train"] for r in result["rounds"])  # every site trained
    final = result["final"]["per_client"]
    assert set(final) == {str(i) for i in range(len(states))}
    assert len({v["i_auroc"] for v in final.values()}) == 1  # one global model
    net = [k for k in states[0] if k.startswith("net.") and "num_batches" not in k]
    same = all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in net)
    assert net and same == saved_global
    assert all(s["pool"].shape == (2, 3, 32, 32) for s in states)  # at each site, ddpm.crop
    if exchange == "scaffold":
        assert result["rounds"][-1]["bytes"]["sent"] >= len(states) * up[-1]


@pytest.mark.slow
def test_asymst_is_federated_by_fedavg_through_flower(tmp_path: Path):
    """Two rounds through Flower's simulation runtime (the DDPM's, then the student's on
    defects from the pool each site drew from the global DDPM); nothing but weights
    travels."""
    import json

    from fedad.cli.sim import launch
    from tests.test_simulation import tiny_sim

    sim = tiny_sim(detector="asymst", exchange="fedavg", examples=0, **TINY_ASYMST)
    out = tmp_path / "out"
    assert launch(sim, out) == 0
    (run,) = list(out.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    states = [torch.load(run / f"site-{i}" / "state.pt", weights_only=True) for i in range(3)]
    check_global_run(result, states, "fedavg", saved_global=True)


def test_asymst_is_federated_by_scaffold(tmp_path: Path):
    """The same two rounds with SCAFFOLD, in process (Flower's runtime is the FedAvg
    test's): its control variates travel too, and the sites end with one global model."""
    import json

    cfg = tiny(**{"exchange": "scaffold", "train.rounds": 2, "asymst.seg_head": False})
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "rounds.json").read_text())
    states = [transport.stores[s].get() for s in range(cfg.num_clients)]
    check_global_run(result, states, "scaffold", saved_global=False)


def test_a_site_that_cannot_train_the_ddpm_says_so_and_makes_cut_paste_defects(
        tmp_path: Path, monkeypatch):
    """Site 1's DDPM loss turns non-finite: it uploads the weights it received, is named in
    rounds.json's notes, and trains its student on cut-paste defects (no pool); site 0 is
    unaffected."""
    import json

    import fedad.detectors.asymst.detector as det_module

    real = det_module.train_ddpm

    def failing(unet, optimizer, images, *args, desc="", **kw):
        if "(site seed 1000)" in desc:  # site 1's seed (train.seed + 1000 * site)
            raise FloatingPointError(f"{desc}: the DDPM loss is nan")
        return real(unet, optimizer, images, *args, desc=desc, **kw)

    monkeypatch.setattr(det_module, "train_ddpm", failing)
    cfg = tiny(**{"train.rounds": 2, "asymst.seg_head": False})
    transport = InProcess(cfg, partition_nodes(cfg))
    server = federate(cfg, transport, transport.keys, tmp_path / "run")
    rounds = json.loads((tmp_path / "run" / "rounds.json").read_text())["rounds"]
    assert rounds[0]["train"]["site-notes"] == {"1": {"synthesis-fallback": 1.0}}
    assert rounds[1]["train"]["site-notes"] == {"1": {"synthesis-fallback": 1.0}}
    states = {s: transport.stores[s].get() for s in (0, 1)}
    assert "pool" in states[0] and "pool" not in states[1]
    assert all(r["train"]["loss"]["mean"] > 0 for r in rounds)
    assert server.history[-1]["evaluate"]["per_client"].keys() == {"0", "1"}


@pytest.mark.parametrize("exchange", ["rowfed", "fedphp"])
def test_asymst_is_personalised_by_rowfed_and_fedphp(tmp_path: Path, exchange: str):
    """Two rounds (the DDPM's, then the student's) in process with a personalised exchange:
    asymst declares a representation and a row matrix (the student's finest projection),
    which is all RowFed and FedPHP ask of a detector; the sites end with their own
    projection, and each scores with its own model."""
    import json

    from fedad.detectors.registry import detector_class

    cfg = tiny(**{"exchange": exchange, "train.rounds": 2, "asymst.seg_head": False})
    check(cfg)
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2] and not result["rejected"]
    assert result["label"] == f"asymst+{exchange}"
    assert all(r["train"]["loss"]["mean"] > 0 for r in result["rounds"])
    key = "net." + detector_class("asymst").row_matrix(cfg)
    states = [transport.stores[s].get() for s in range(cfg.num_clients)]
    assert all(torch.isfinite(s[key]).all() for s in states)
    assert not torch.equal(states[0][key], states[1][key])  # personalised at each site
    final = result["final"]["per_client"]
    assert set(final) == {"0", "1"} and all(0 <= v["i_auroc"] <= 1 for v in final.values())
