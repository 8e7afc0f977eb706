"""Differential privacy on summaries: the accountant, the mechanisms' noise and bounds, and
private uploads that the server still accepts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fedad.components.gaussian import position_statistics
from fedad.config.schema import PrivacyConfig, RunConfig
from fedad.detectors.base import FeatureShape
from fedad.detectors.padim.config import PaDiMConfig
from fedad.detectors.padim.detector import PaDiM
from fedad.detectors.patchcore.config import PatchCoreConfig
from fedad.detectors.patchcore.detector import PatchCore
from fedad.errors import ConfigError
from fedad.federation.compose import check
from fedad.privacy.accountant import calibrated, epsilon_spent, noise_multiplier
from fedad.privacy.bank import private_mean_map
from fedad.privacy.clipping import clip_rows
from fedad.privacy.inversion import (
    decode,
    nearest_patches,
    patch_similarity,
    position_patches,
    train_decoder,
)
from fedad.privacy.lloyd import private_centres
from fedad.privacy.noise import generator
from fedad.privacy.statistics import add_noise, clipped_sums, private_statistics, sensitivity


def rdp_epsilon(z: float, k: int, delta: float) -> float:
    """The same bound written out: k Gaussian mechanisms have RDP k alpha / (2 z^2) (Mironov
    2017); Balle et al. (2020, Thm. 21) convert it; minimised over a fine grid of orders."""
    alphas = np.concatenate([np.linspace(1.001, 2, 2000), np.linspace(2, 2000, 200000)])
    eps = (k * alphas / (2 * z * z) + np.log((alphas - 1) / alphas)
           - (np.log(delta) + np.log(alphas)) / (alphas - 1))
    return float(eps.min())


def exact_gaussian_delta(eps: float, z: float) -> float:
    """delta(eps) of one Gaussian mechanism of multiplier z, exactly (Balle and Wang 2018)."""
    return float(norm.cdf(1 / (2 * z) - eps * z) - math.exp(eps) * norm.cdf(-1 / (2 * z) - eps * z))


@pytest.mark.parametrize("z,k", [(1.0, 1), (2.0, 10), (0.7, 3)])
def test_the_accountant_matches_the_gaussian_rdp_bound_and_upper_bounds_the_exact_epsilon(z, k):
    delta = 1e-5
    eps = epsilon_spent(z, k, delta)
    assert eps == pytest.approx(rdp_epsilon(z, k, delta), rel=0.02)
    if k == 1:  # an upper bound: the exact mechanism's delta at that epsilon is below delta
        assert exact_gaussian_delta(eps, z) <= delta
        assert exact_gaussian_delta(0.7 * eps, z) > delta  # ... and not a loose one


def test_one_gaussian_release_of_unit_noise_spends_the_known_epsilon():
    # k = 1, z = 1, delta = 1e-5: the RDP bound is 4.73 at alpha = 5.6, worked by hand from
    # alpha / 2 + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)
    # = 2.8 - 0.197 + (11.513 - 1.723) / 4.6
    assert epsilon_spent(1.0, 1, 1e-5) == pytest.approx(4.73, abs=0.01)


def test_the_noise_is_calibrated_to_the_target_epsilon():
    for eps, k in [(1.0, 1), (8.0, 6), (100.0, 1)]:
        z = noise_multiplier(eps, 1e-5, k)
        assert epsilon_spent(z, k, 1e-5) <= eps
        assert epsilon_spent(z * 0.99, k, 1e-5) > eps  # the least noise that meets it
    assert noise_multiplier(1.0, 1e-5, 4) > noise_multiplier(1.0, 1e-5, 1)  # composition


def test_clipping_bounds_every_row_and_leaves_short_rows_alone():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = clip_rows(rows, 1.0)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def random_rows(n=30, p=5, d=4, scale=3.0, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, d, generator=g, dtype=torch.float64) * scale + 1.0


def test_one_image_moves_the_clipped_sums_by_at_most_the_stated_sensitivity():
    rows = random_rows(scale=10.0)  # every row far beyond the clip
    full = clipped_sums(rows, 0.5)
    worst = 0.0
    for i in range(rows.shape[0]):
        less = clipped_sums(torch.cat([rows[:i], rows[i + 1:]]), 0.5)
        d = full["second"].shape[-1]
        r, c = torch.triu_indices(d, d)
        diff = torch.cat([(full["count"] - less["count"]).reshape(1),
                          (full["first"] - less["first"]).reshape(-1),
                          (full["second"] - less["second"])[:, r, c].reshape(-1)])
        worst = max(worst, float(torch.linalg.vector_norm(diff)))
    assert worst <= sensitivity(rows.shape[1]) + 1e-9
    assert worst > 0.8 * sensitivity(rows.shape[1])  # rows at the bound come close


def test_the_noise_has_the_calibrated_standard_deviation_and_keeps_the_scatter_symmetric():
    p, d, std = 400, 6, 0.37
    zero = {"count": torch.tensor(0.0, dtype=torch.float64),
            "first": torch.zeros(p, d, dtype=torch.float64),
            "second": torch.zeros(p, d, d, dtype=torch.float64)}
    noisy = add_noise(zero, std, generator(3))
    r, c = torch.triu_indices(d, d)
    for values in (noisy["first"].reshape(-1), noisy["second"][:, r, c].reshape(-1)):
        assert float(values.std()) == pytest.approx(std, rel=0.05)
        assert abs(float(values.mean())) < 0.05 * std
    assert torch.equal(noisy["second"], noisy["second"].transpose(1, 2))


def test_without_noise_the_private_statistics_are_those_of_the_clipped_rows():
    rows = random_rows()
    got = private_statistics(rows, 2.0, 0.0, generator(0))
    want = position_statistics(clip_rows(rows, 2.0))
    assert int(got["count"][0]) == rows.shape[0]
    np.testing.assert_allclose(got["mean"], want["mean"], atol=1e-10)
    np.testing.assert_allclose(got["scatter"], want["scatter"], atol=1e-8)


SHAPE = FeatureShape(channels=6, height=3, width=4)


def features(n=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, 3, 4, generator=g) + 2.0


def private_cfg(**privacy) -> RunConfig:
    pv = {"epsilon": 2.0, "clip": 4.0, "seed": 0, "centres": 8, **privacy}
    return RunConfig(padim=PaDiMConfig(channels=4), patchcore=PatchCoreConfig(),
                     privacy=PrivacyConfig(**pv))


@pytest.mark.parametrize("cls", [PaDiM, PatchCore])
def test_a_private_upload_passes_validate_and_states_its_budget(cls):
    cfg = private_cfg()
    site = cls(cfg, SHAPE, seed=1)
    info = site.fit(features(), None, 1)
    upload = site.summarize(1)
    checked = cls(cfg, SHAPE).validate(upload, "site 1")  # raises if it would be refused
    assert set(checked) == set(upload)
    assert info.notes["dp-epsilon"] <= 2.0
    assert info.notes["dp-epsilon"] > 1.9
    assert info.notes["dp-releases"] == cls.private_releases(cfg)
    plain = cls(RunConfig(padim=PaDiMConfig(channels=4)), SHAPE, seed=1)
    plain.fit(features(), None, 1)
    assert any(not np.array_equal(a, plain.summarize(1)[k]) for k, a in upload.items())


def test_padim_uploads_with_heavy_noise_still_pass_validate():
    cfg = private_cfg(epsilon=0.01)  # noise far above the signal: a scatter of pure noise
    site = PaDiM(cfg, SHAPE, seed=2)
    site.fit(features(), None, 1)
    PaDiM(cfg, SHAPE).validate(site.summarize(1), "site 2")


def test_dp_lloyd_without_noise_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    pick = torch.randint(0, 3, (40, 10), generator=g)
    rows = centres[pick] + 0.05 * torch.randn(40, 10, 2, generator=g)
    got, images = private_centres(rows, 3, 10.0, 10, 0.0, generator(1))
    assert images == 40
    dist = torch.cdist(centres, got).min(dim=1).values
    assert float(dist.max()) < 0.1, got


def test_privacy_config_is_checked_before_a_run():
    with pytest.raises(ConfigError, match="privacy.clip"):
        check(RunConfig(detector="padim", privacy=PrivacyConfig(epsilon=1.0)))
    with pytest.raises(ConfigError, match="not for detector=feddymem with exchange=fedavg"):
        check(RunConfig(exchange="fedavg", privacy=PrivacyConfig(epsilon=1.0, clip=1.0)))
    with pytest.raises(ConfigError, match="feddymem.reduce=positional"):
        cfg = RunConfig(privacy=PrivacyConfig(epsilon=1.0, clip=1.0))
        cfg.feddymem.reduce = "kmeans"
        check(cfg)
    cfg = calibrated(PrivacyConfig(epsilon=3.0, clip=1.0), 6)
    assert cfg.releases == 6 and cfg.epsilon <= 3.0


def test_position_patches_are_the_image_crops_around_each_position():
    img = torch.rand(1, 3, 32, 32)
    out = position_patches(img, grid=4, size=12)  # stride 8, padding 2
    assert out.shape == (1, 16, 3, 12, 12)
    # position (1, 2): centre (12, 20); its patch spans rows 6..17 and columns 14..25
    assert torch.equal(out[0, 1 * 4 + 2], img[0, :, 6:18, 14:26])
    with pytest.raises(ValueError, match="parity"):
        position_patches(img, grid=4, size=11)


def test_the_decoder_learns_a_public_mapping_and_the_scores_find_the_true_patch():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(2000, 8, generator=g)
    mix = torch.randn(8, 3 * 8 * 8, generator=g) * 0.5
    patches = torch.sigmoid(rows @ mix).view(-1, 3, 8, 8)
    dec = train_decoder(rows, patches, steps=400, batch=256, hidden=128)
    before = float(((patches - patches.mean(0)) ** 2).mean())
    after = float(((decode(dec, rows) - patches) ** 2).mean())
    assert after < 0.2 * before
    near = nearest_patches(patches[:5] + 0.001, patches)
    assert near.tolist() == [0, 1, 2, 3, 4]
    psnr, ssim = patch_similarity(patches[:3], patches[:3])
    assert (ssim > 0.999).all() and (psnr > 60).all()
    psnr, ssim = patch_similarity(patches[:3], 1 - patches[:3])
    assert (ssim < 0.5).all()


def test_a_private_padim_run_accepts_every_site_and_records_what_each_spent(tmp_path):
    """Through fedad's engine in one process (the messages Flower would carry): every
    noisy upload passes the server's checks, and the run and each site state the budget."""
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = RunConfig(detector="padim", num_clients=3,
                    privacy=PrivacyConfig(epsilon=5.0, clip=30.0, seed=0))
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 4, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 32
    transport = InProcess(cfg, partition_nodes(cfg))
    server = federate(cfg, transport, transport.keys, tmp_path / "run")
    (train,) = [r["train"] for r in server.history]
    assert train["clients"] == 3 and not server.robust_log
    spent = [v["dp-epsilon"] for v in train["site-notes"].values()]
    assert len(spent) == 3 and all(4.9 < e <= 5.0 for e in spent)
    (note,) = [n for n in server.notes if n.startswith("differential privacy")]
    stated = re.search(r"\(([0-9.e+-]+), 1e-05\)-DP", note)
    assert stated and 4.9 < float(stated.group(1)) <= 5.0, note


def test_the_private_bank_without_noise_is_the_mean_of_the_clipped_memory_maps():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(10, 2, 3, 4, generator=g) * torch.tensor([0.1, 5.0] * 5)[:, None,
                                                                                None, None]
    got = private_mean_map([maps[:4], maps[4:]], 2.0, 0.0, generator(0))
    flat = maps.flatten(1).double()
    norms = flat.norm(dim=1, keepdim=True)
    want = (flat * (2.0 / norms.clamp_min(2.0))).mean(dim=0).reshape(2, 3, 4)
    torch.testing.assert_close(got, want.float())
    noisy = private_mean_map([maps], 2.0, 1.0, generator(0))
    assert not torch.allclose(noisy, want.float(), atol=0.1)


def test_a_private_feddymem_run_spends_one_release_per_round(tmp_path):
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = RunConfig(num_clients=2, examples=0,
                    privacy=PrivacyConfig(epsilon=20.0, clip=50.0, seed=0))
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 4, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 32
    cfg.train.rounds, cfg.eval_every = 2, 10**9
    transport = InProcess(cfg, partition_nodes(cfg))
    server = federate(cfg, transport, transport.keys, tmp_path / "run")
    assert [r["train"]["clients"] for r in server.history] == [2, 2, 2]  # rounds 0, 1, 2
    for r in server.history:
        for notes in r["train"]["site-notes"].values():
            assert notes["dp-releases"] == 3 and 19.0 < notes["dp-epsilon"] <= 20.0
