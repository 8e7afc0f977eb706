"""Anomalies removed as noises (fedad/detectors/diffad, fedad/diffusion/posterior.py and
gradient_denoise.py) on tiny images and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedad.config.schema import BackboneConfig, RunConfig
from fedad.detectors.base import FeatureShape
from fedad.detectors.diffad.config import DiffADConfig
from fedad.detectors.diffad.reconstruct import reconstruct
from fedad.detectors.padim.detector import PaDiM
from fedad.detectors.registry import create, feature_config
from fedad.diffusion.gradient_denoise import backtracking_step, diffusion_step, unit_gradient
from fedad.diffusion.loss import ddpm_loss
from fedad.diffusion.posterior import chain, posterior_kl
from fedad.diffusion.schedule import alphas_cumprod, q_sample
from fedad.diffusion.train import random_crops
from fedad.diffusion.unet import build_unet
from fedad.errors import ConfigError
from fedad.evaluation.objectives import gaussian_objective
from fedad.features.extractor import build_feature_extractor
from fedad.features.levels import Levels
from fedad.federation.compose import check


def tiny() -> RunConfig:
    cfg = RunConfig(detector="diffad", exchange="fedavg")
    cfg.ddpm.channels, cfg.ddpm.groups, cfg.ddpm.crop = [8, 16], 4, 16
    cfg.ddpm.steps, cfg.ddpm.lr, cfg.ddpm.ema, cfg.train.local_steps = 40, 1e-3, 0.0, 8
    cfg.diffad.norm_images, cfg.diffad.size, cfg.diffad.head_stride = 2, 0, 2
    cfg.train.batch_size = cfg.ddpm.batch_size = 4
    return cfg


def test_the_chain_is_the_authors_respacing():
    ts = chain(1000, 250)
    assert len(ts) == 250 and ts[0] == 0 and ts[-1] == 999
    assert [ts[5], ts[50], ts[100]] == [20, 201, 401]  # seed-methods.md section 3
    with pytest.raises(ValueError):
        chain(1000, 1001)


def test_the_kl_map_is_zero_where_the_noise_is_predicted_exactly_and_positive_elsewhere():
    abar = alphas_cumprod(RunConfig().ddpm)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 1.6 - 0.8
    noise = torch.randn(x0.shape, generator=g)
    ts = chain(1000, 250)
    for k in (5, 50, 100):
        t, prev = ts[k], ts[k - 1]
        x_t = q_sample(x0, torch.full((2,), t), noise, abar)
        eps = noise.clone()
        eps[:, :, :4] += 0.3  # wrong in the top half
        kl = posterior_kl(x0, x_t, eps, float(abar[t]), float(abar[prev]))
        assert kl.shape == x0.shape
        assert kl[:, :, 4:].abs().max() < 1e-8
        assert (kl[:, :, :4] > 1e-4).all()
    with pytest.raises(ValueError):  # t' must come before t
        posterior_kl(x0, x0, noise, float(abar[5]), float(abar[10]))


def test_config_values_no_run_can_use_are_refused_when_composed():
    cfg = tiny()
    check(cfg)
    for key, bad in (("kl_steps", [0, 5]), ("chain", 2000), ("alpha", 1.5),
                     ("denoise_index", 250), ("combine", "max")):
        c = tiny()
        setattr(c.diffad, key, bad)
        with pytest.raises(ConfigError, match=key):
            check(c)
    c = tiny()
    c.exchange = "fedbn"  # GroupNorm only: nothing for FedBN to keep local
    with pytest.raises(ConfigError, match="fedbn"):
        check(c)


def toy_normals(n: int, size: int, seed: int) -> torch.Tensor:
    """Grey images with fine noise, in ``[-1, 1]``."""
    g = torch.Generator().manual_seed(seed)
    grey = torch.rand(n, 1, 1, 1, generator=g) * 0.2 - 0.1
    x = grey + 0.05 * torch.randn(n, 1, size, size, generator=g)
    return x.expand(n, 3, size, size).clamp(-1, 1).contiguous()


def test_training_lowers_the_loss_and_scores_do_not_depend_on_the_batch_size():
    cfg = tiny()
    levels = Levels(cfg.backbone, cfg.diffad.strides)
    images = levels.from_unit(toy_normals(8, 32, 0))
    det = create(cfg, FeatureShape(3, 32, 32), "cpu", seed=0)
    first = det.fit(images, None, 1)
    for r in range(2, 6):
        last = det.fit(images, None, r)
    assert last.steps == first.steps == 8 and last.loss < first.loss
    summary = det.own_summary(images)
    test = levels.from_unit(toy_normals(5, 32, 9))
    a = det.score(test, summary, 32)
    cfg.train.batch_size = 2
    b = det.score(test, summary, 32)
    assert a.maps.shape == (5, 32, 32) and torch.isfinite(a.maps).all()
    assert torch.allclose(a.maps, b.maps, atol=1e-5) and torch.allclose(a.image, b.image,
                                                                        atol=1e-5)
    with pytest.raises(ConfigError, match="feature_stats"):
        det.score(test, {}, 32)


def smooth_normals(n: int, size: int, seed: int) -> torch.Tensor:
    """Diagonal sine stripes of random phase, in ``[-1, 1]``: easy for a tiny DDPM."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(),
                            indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    x = 0.3 * torch.sin(2 * torch.pi * (xx + yy)[None] / 16 + phase)
    return x[:, None].expand(n, 3, size, size).contiguous()


def test_the_held_out_loss_is_repeatable_falls_with_training_and_rises_off_the_normals():
    """``held_out_loss`` (what ``diffusion_ad.py --choose-scaffold`` chooses on): the same
    images give the same number, more training on the normals lowers it on held-out normals,
    and images unlike the normals score higher than the held-out normals."""
    cfg = tiny()
    cfg.ddpm.steps, cfg.train.local_steps = 120, 40  # 3 rounds of 40 steps
    levels = Levels(cfg.backbone, cfg.diffad.strides)
    train = levels.from_unit(smooth_normals(8, 32, 0))
    held = levels.from_unit(smooth_normals(4, 32, 1))
    det = create(cfg, FeatureShape(3, 32, 32), "cpu", seed=0)
    det.fit(train, None, 1)
    early = det.held_out_loss(held)
    assert det.held_out_loss(held) == early
    for r in (2, 3):
        det.fit(train, None, r)
    late = det.held_out_loss(held)
    off = levels.from_unit(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
                           * 2 - 1)
    assert late < early and det.held_out_loss(off) > late


def test_the_reconstruction_removes_a_defect_and_moves_a_normal_image_far_less():
    size = 32
    ddpm = tiny().ddpm
    unet = build_unet(ddpm, 3, seed=0)
    abar = alphas_cumprod(ddpm)
    normals = smooth_normals(32, size, 0)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = ddpm_loss(unet, random_crops(normals, 16, 16, g), abar, g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    pcfg = feature_config(RunConfig(detector="padim"))
    extractor, _ = build_feature_extractor(pcfg.backbone)
    units = Levels(BackboneConfig(), [4])
    train = extractor(units.from_unit(normals))
    padim = PaDiM(pcfg, FeatureShape(*train.shape[1:]))
    padim.fit(train, None, 1)
    summary = padim.merge([padim.validate(padim.summarize(1), "site")], 1)
    objective = gaussian_objective(padim, summary, extractor, units)

    normal = smooth_normals(1, size, 5)
    defective = normal.clone()
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[12:20, 12:20] = True
    defective[..., inside] = 0.9  # a bright square
    x = torch.cat([normal, defective])
    out = units.to_unit(reconstruct(units.from_unit(x), unet, abar, objective, units,
                                    DiffADConfig(rounds=10)))
    with torch.no_grad():
        before, after = objective(x), objective(out)
    assert after[1] < 0.5 * before[1]  # the defect's score more than halved
    # the defect pulled towards the normal image under it
    err = (out[1] - normal[0]).abs().mean(0)[inside].mean()
    assert err < 0.6 * (defective[0] - normal[0]).abs().mean(0)[inside].mean()
    # the normal image moved far less than the defect (the steps have a fixed size, so it
    # moves a little: the denoising step is what takes that back)
    moved = (out - x).abs().mean(1)
    assert moved[0].mean() < 0.25 * moved[1][inside].mean()


def test_backtracking_never_raises_the_score_and_takes_the_full_step_when_it_lowers_it():
    g = torch.Generator().manual_seed(0)
    centre = 0.1
    x = centre + torch.randn(2, 3, 8, 8, generator=g) * torch.tensor([0.05, 1.0]).view(2, 1, 1, 1)

    def objective(z: torch.Tensor) -> torch.Tensor:
        return ((z - centre) ** 2).flatten(1).sum(1)

    s = 0.5  # ten times image 0's spread: the fixed step overshoots there
    fixed = diffusion_step(x, unit_gradient(objective, x), torch.full((2,), s))
    out = backtracking_step(objective, x, s, halvings=4)
    before, after = objective(x), objective(out)
    assert objective(fixed)[0] > before[0]  # the paper's step raises image 0's score
    assert (after <= before).all()
    assert after[0] < before[0]  # a halved step still descends
    assert torch.equal(out[1], fixed[1])  # image 1: the full step, as the fixed rule takes
    # no halving at all: image 0 cannot descend, so it is left where it was
    assert torch.equal(backtracking_step(objective, x, s, halvings=0)[0], x[0])


def test_diffad_is_federated_by_fedavg_and_reports_its_held_out_loss(tmp_path: Path):
    """Two rounds on the engine in one process (the site and server code a Flower run
    calls; Flower's runtime for a trained detector is tests/test_asymst.py's and
    tests/test_trainable.py's): every site trains the UNet and the head and ends with the
    same global weights; nothing but weights travels (every key uploaded is the module's);
    every site is scored, and a site holding a validation split reports ``val_loss``, the
    objective on its held-out normals (HeldOutLoss), averaged by the server."""
    import json

    from fedad.cli.sim import run_config_of
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes
    from tests.test_simulation import tiny_sim

    cfg = run_config_of(tiny_sim(detector="diffad", exchange="fedavg", examples=0,
                                 eval_every=2, **{
        "ddpm.steps": 2, "train.local_steps": 1, "ddpm.channels": [8, 16], "ddpm.groups": 4,
        "ddpm.crop": 32, "diffad.norm_images": 2, "diffad.size": 0, "diffad.head_stride": 2,
        "calibration.holdout": 0.5}))
    run = tmp_path / "run"
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, run)
    result = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2] and not result["rejected"]
    assert result["label"] == "diffad+fedavg"
    # the budget preset's EMA shadow travels beside the weights (fedad/components/ema.py)
    assert {k.split(".")[0] for k in result["received_keys"][0]} == {"unet", "head", "ema"}
    assert [r["train"]["phase"]["name"] for r in result["rounds"]] == ["network"] * 2
    final = result["final"]["per_client"]
    assert set(final) == {"0", "1", "2"}
    assert all(0.0 <= v["i_auroc"] <= 1.0 for v in final.values())
    held = [v for v in final.values() if "val-images" in v]
    assert held and all(v["val_loss"] > 0 for v in held)
    assert result["final"]["val_loss"]["mean"] > 0
    states = [torch.load(run / f"site-{i}" / "state.pt", weights_only=True) for i in range(3)]
    net = [k for k in states[0] if k.startswith("net.")]
    assert net and all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in net)


def test_sites_holding_the_same_model_share_the_raw_maps_and_others_do_not(monkeypatch):
    from fedad.detectors.diffad import detector as module

    cfg = tiny()
    images = Levels(cfg.backbone, cfg.diffad.strides).from_unit(toy_normals(3, 32, 0))
    a = create(cfg, FeatureShape(3, 32, 32), "cpu", seed=0)
    b = create(cfg, FeatureShape(3, 32, 32), "cpu", seed=1)
    b.net.load_state_dict(a.net.state_dict())
    calls = []
    original = module.DiffAD._raw_maps

    def counted(self, *args):
        calls.append(self.seed)
        return original(self, *args)

    monkeypatch.setattr(module.DiffAD, "_raw_maps", counted)
    first = a.raw_maps(images, 32)
    second = b.raw_maps(images, 32)  # the same weights and images: from the cache
    with torch.no_grad():
        next(b.net.parameters()).add_(0.1)
    third = b.raw_maps(images, 32)  # other weights: computed
    assert calls == [0, 1]  # a once; b only after its weights changed
    assert torch.equal(first[0], second[0]) and not torch.equal(first[0], third[0])


def test_f2pad_diffusion_init_takes_the_reconstruction_inside_the_mask_only():
    from fedad.refinements.f2pad.init import initial_normal

    x = torch.zeros(3, 8, 8)
    recon = torch.ones(3, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 3:6] = True
    n0 = initial_normal(x, mask, "diffusion", recon)
    assert torch.equal(n0[:, mask], recon[:, mask]) and torch.equal(n0[:, ~mask], x[:, ~mask])
    with pytest.raises(ValueError, match="reconstruction"):
        initial_normal(x, mask, "diffusion")
    cfg = RunConfig(detector="padim", refine="f2pad")
    cfg.f2pad.init = "diffusion"
    with pytest.raises(ConfigError, match="diffusion_run"):
        check(cfg)
