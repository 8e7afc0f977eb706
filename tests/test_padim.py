"""PaDiM (Defard et al. 2021) federated by exact sufficient statistics: equal to centralized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedad.components.gaussian import (
    combine_statistics,
    gaussian,
    inverse_covariance,
    mahalanobis,
    pack_upper,
    position_statistics,
    unpack_upper,
)
from fedad.config.schema import RunConfig, ScoreConfig
from fedad.detectors.base import Detector, FeatureShape, summary_nbytes
from fedad.detectors.padim.config import PaDiMConfig
from fedad.detectors.padim.detector import PaDiM, upload_nbytes
from fedad.detectors.padim.statistics import channel_subset, position_rows
from fedad.errors import BankError

SHAPE = FeatureShape(channels=12, height=3, width=4)
D = 8
EPS = 0.01


def make_cfg(**padim) -> RunConfig:
    """float64 uploads (exact up to rounding) unless a test asks for float32, the default."""
    padim = {"channels": D, "channel_seed": 7, "epsilon": EPS, "upload_dtype": "float64",
             **padim}
    return RunConfig(padim=PaDiMConfig(**padim), score=ScoreConfig(sigma=1.0))


def client_features(sizes=(2, 5, 11), seed=0, offset=3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # correlated channels with a non-zero mean, so centring errors would show
    mix = torch.randn(12, 12, generator=g)
    out = []
    for n in sizes:
        z = torch.randn(n, 3, 4, 12, generator=g, dtype=torch.float64) @ mix.double() + offset
        out.append(z.permute(0, 3, 1, 2).contiguous())
    return out


def stats_of(features: torch.Tensor, idx: np.ndarray, **kw) -> dict:
    return position_statistics(position_rows(features, idx), **kw)


def federated(cfg: RunConfig, feats: list[torch.Tensor]) -> tuple[PaDiM, dict]:
    server = PaDiM(cfg, SHAPE)
    uploads = []
    for i, f in enumerate(feats):
        client = PaDiM(cfg, SHAPE, seed=100 + i)
        client.fit(f, None, 1)
        uploads.append(server.validate(client.summarize(1), f"client {i}"))
    return server, server.merge(uploads, 1)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_padim_follows_the_detector_protocol():
    det = PaDiM(make_cfg(), SHAPE)
    assert isinstance(det, Detector)
    assert (det.name, det.iterative, det.first_round) == ("padim", False, 1)


def test_federated_equals_centralized_and_numpy_cov():
    cfg = make_cfg()
    feats = client_features()
    server, merged = federated(cfg, feats)
    assert merged["count"].dtype == np.int64 and merged["count"][0] == 18
    mean_fed, cov_fed = gaussian(merged, EPS)

    everything = torch.cat(feats)
    central = stats_of(everything, server.idx)
    mean_c, cov_c = gaussian(central, EPS)
    assert rel_err(mean_fed, mean_c) < 1e-9
    assert rel_err(cov_fed, cov_c) < 1e-9

    # against numpy's unbiased covariance per position, on the same channel subset
    x = everything[:, server.idx].double().numpy().reshape(18, D, -1)  # (N, d, P)
    for p in range(SHAPE.positions):
        ref = np.cov(x[:, :, p], rowvar=False) + EPS * np.eye(D)
        assert rel_err(cov_fed[p], ref) < 1e-9
        assert rel_err(mean_fed[p], x[:, :, p].mean(0)) < 1e-9


def test_statistics_combine_exactly_and_do_not_depend_on_batching():
    feats = client_features()
    idx = channel_subset(12, D, 3)
    whole = stats_of(torch.cat(feats), idx, batch_size=4)
    one_by_one = stats_of(torch.cat(feats), idx, batch_size=1)
    parts = combine_statistics([stats_of(f, idx) for f in feats])
    packed = combine_statistics([{**st, "scatter": pack_upper(st["scatter"])}
                                 for st in (stats_of(f, idx) for f in feats)])
    assert whole["scatter"].shape == (SHAPE.positions, D, D)
    assert whole["mean"].dtype == np.float64 and whole["scatter"].dtype == np.float64
    for key in ("mean", "scatter"):
        assert rel_err(one_by_one[key], whole[key]) < 1e-13
        assert rel_err(parts[key], whole[key]) < 1e-13
    assert rel_err(unpack_upper(packed["scatter"]), whole["scatter"]) < 1e-13
    assert int(parts["count"][0]) == int(packed["count"][0]) == 18


def test_centred_scatter_survives_features_far_from_zero():
    """Features whose mean is 10^4 times their spread: the raw-moment covariance
    ``(sum x x^T - n mu mu^T) / (n - 1)`` loses about 8 digits to cancellation; centred
    scatter combined by the pairwise update keeps federated equal to a two-pass numpy
    covariance to 1e-9."""
    feats = client_features(offset=3e4)
    cfg = make_cfg()
    server, merged = federated(cfg, feats)
    _, cov = gaussian(merged, 0.0)
    x = torch.cat(feats)[:, server.idx].numpy().reshape(18, D, -1)
    ref = np.stack([np.cov(x[:, :, p], rowvar=False) for p in range(SHAPE.positions)])
    assert rel_err(cov, ref) < 1e-9
    # what the raw moments gave (the formula before: fails the same bound)
    rows = x.transpose(2, 0, 1)  # (P, N, d)
    outer = np.einsum("pni,pnj->pij", rows, rows)
    mu = rows.mean(axis=1)
    raw = (outer - 18 * mu[:, :, None] * mu[:, None, :]) / 17
    assert rel_err(raw, ref) > 1e-9


def test_one_image_gives_epsilon_identity():
    idx = channel_subset(12, D, 0)
    mean, cov = gaussian(stats_of(client_features((1,))[0], idx), EPS)
    assert np.all(np.isfinite(mean))
    assert np.array_equal(cov, np.broadcast_to(EPS * np.eye(D), cov.shape))


def test_channel_subset_is_shared_and_seeded():
    a = PaDiM(make_cfg(), SHAPE, seed=1).idx
    b = PaDiM(make_cfg(), SHAPE, seed=2).idx
    assert np.array_equal(a, b)  # client seed does not matter, channel_seed does
    c = PaDiM(make_cfg(channel_seed=8), SHAPE).idx
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and len(a) == D and len(set(a.tolist())) == D
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 12
    assert np.array_equal(channel_subset(12, 50, 0), np.arange(12))


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, D, D))
    sym = a + a.transpose(0, 2, 1)
    packed = pack_upper(sym, np.float64)
    assert packed.shape == (5, D * (D + 1) // 2)
    assert np.array_equal(unpack_upper(packed), sym)
    assert np.array_equal(unpack_upper(packed, D), sym)
    assert pack_upper(sym, np.float32).dtype == np.float32


def test_upload_dtype_float64_exact_float32_close():
    feats = client_features((5,))[0]
    exact = PaDiM(make_cfg(), SHAPE)
    exact.fit(feats, None, 1)
    up64 = exact.summarize(1)
    stats = stats_of(feats, exact.idx)
    assert up64["count"].dtype == np.int64 and up64["scatter"].dtype == np.float64
    assert np.array_equal(up64["mean"], stats["mean"])
    assert np.array_equal(unpack_upper(up64["scatter"]), stats["scatter"])

    half = PaDiM(make_cfg(upload_dtype="float32"), SHAPE)
    half.fit(feats, None, 1)
    up32 = half.summarize(1)
    assert up32["mean"].dtype == np.float32 and up32["scatter"].dtype == np.float32
    assert up32["count"].dtype == np.int64
    assert not np.array_equal(up32["scatter"].astype(np.float64), up64["scatter"])
    assert rel_err(up32["scatter"].astype(np.float64), up64["scatter"]) < 1e-6
    half.validate(up32, "client f32")  # rounding passes the consistency checks
    assert summary_nbytes(up64) == upload_nbytes(SHAPE, make_cfg())
    assert summary_nbytes(up32) == upload_nbytes(SHAPE, make_cfg(upload_dtype="float32"))
    assert summary_nbytes(up32) < 0.6 * summary_nbytes(up64)


def test_float32_upload_error_on_the_federated_covariance():
    """What ``padim.upload_dtype=float32`` costs: the federated covariance of three
    clients against the float64 one, relative to its largest entry (about float32's
    epsilon, 6e-8; the bound documented in the config)."""
    feats = client_features(offset=3.0)
    _, m64 = federated(make_cfg(), feats)
    _, m32 = federated(make_cfg(upload_dtype="float32"), feats)
    _, c64 = gaussian(m64, EPS)
    _, c32 = gaussian(m32, EPS)
    err = rel_err(c32, c64)
    assert 0 < err < 1e-6



def test_upload_bytes_for_mtd_at_224px():
    shape = FeatureShape(channels=176, height=56, width=56)
    assert upload_nbytes(shape, RunConfig(padim=PaDiMConfig(upload_dtype="float64"))) == (
        8 + 3136 * (100 + 5050) * 8)  # as published: strides 4/8/16, float64
    assert upload_nbytes(shape, RunConfig()) == 8 + 3136 * (100 + 5050) * 4  # float32
    # the default reads strides 8/16 (Lite0: 40 + 112 channels, 28 x 28 at 224 px): an
    # eighth of the published layout's bytes
    lean = FeatureShape(channels=152, height=28, width=28)
    assert upload_nbytes(lean, RunConfig()) == 8 + 784 * (100 + 5050) * 4


@pytest.fixture()
def good_upload() -> dict[str, np.ndarray]:
    det = PaDiM(make_cfg(), SHAPE)
    det.fit(client_features((6,))[0], None, 1)
    return det.summarize(1)


def _broken(upload: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    bad = {k: v.copy() for k, v in upload.items()}
    if what == "missing key":
        del bad["scatter"]
    elif what == "extra key":
        bad["weights"] = np.zeros(3)
    elif what == "mean shape":
        bad["mean"] = bad["mean"][:, :-1]
    elif what == "scatter shape":
        bad["scatter"] = bad["scatter"][:-1]
    elif what == "count shape":
        bad["count"] = np.array(6, dtype=np.int64)
    elif what == "nan":
        bad["mean"][0, 0] = np.nan
    elif what == "inf":
        bad["scatter"][1, 3] = np.inf
    elif what == "float count":
        bad["count"] = np.array([6.0])
    elif what == "zero count":
        bad["count"] = np.array([0], dtype=np.int64)
    elif what == "huge count":
        bad["count"] = np.array([10**12], dtype=np.int64)
    elif what == "off-diagonal":
        bad["scatter"][2, 1] = 1e6  # |s_01| far above sqrt(s_00 * s_11)
    elif what == "negative diagonal":
        bad["scatter"][0, 0] = -1.0
    return bad


@pytest.mark.parametrize(("what", "says"), [
    ("missing key", "missing"), ("extra key", "unexpected"),
    ("mean shape", "'mean' has shape"), ("scatter shape", "'scatter' has shape"),
    ("count shape", "'count' has shape"), ("nan", "'mean' holds 1 non-finite"),
    ("inf", "'scatter' holds 1 non-finite"), ("float count", "'count' has dtype float"),
    ("zero count", "'count' is 0"), ("huge count", "'count' is 1000000000000"),
    ("off-diagonal", "scatter_ij"), ("negative diagonal", "negative sums of squares")])
def test_validate_rejects_naming_the_client(good_upload, what, says):
    det = PaDiM(make_cfg(), SHAPE)
    det.validate(good_upload, "client 3")  # the unbroken upload passes
    with pytest.raises(BankError, match=f"client 3: .*{says}"):
        det.validate(_broken(good_upload, what), "client 3")


def test_validate_returns_float64(good_upload):
    det = PaDiM(make_cfg(upload_dtype="float32"), SHAPE)
    up = {k: (v.astype(np.float32) if k != "count" else v) for k, v in good_upload.items()}
    out = det.validate(up, "c")
    assert out["mean"].dtype == np.float64 and out["scatter"].dtype == np.float64
    assert out["count"].dtype == np.int64


def test_mahalanobis_matches_eq_2_by_hand():
    feats = client_features((9,))[0]
    idx = channel_subset(12, D, 1)
    mean, cov = gaussian(stats_of(feats, idx), EPS)
    inv = inverse_covariance(cov, torch.float64)
    assert torch.allclose(inv @ torch.from_numpy(cov),
                          torch.eye(D, dtype=torch.float64).expand(len(cov), D, D), atol=1e-8)
    threads = torch.get_num_threads()
    inverse_covariance(cov)
    assert torch.get_num_threads() == threads  # the one-thread inversion restores the count
    test = client_features((2,), seed=5)[0]
    dist = mahalanobis(position_rows(test, idx).transpose(0, 1), mean, inv)  # (P, N)
    assert dist.shape == (12, 2)
    x = test[1, idx, 2, 3].double().numpy()
    p = 2 * 4 + 3
    diff = x - mean[p]
    expect = np.sqrt(diff @ np.linalg.inv(cov[p]) @ diff)
    assert abs(float(dist[p, 1]) - expect) < 1e-8 * expect


def test_score_flags_an_outlier_patch_and_caches_the_inverse():
    cfg = make_cfg()
    *train, test = client_features((2, 5, 11, 4))  # test images from the same distribution
    _, merged = federated(cfg, train)
    test[2, :, 1, 2] += 25.0  # one anomalous patch in image 2
    det = PaDiM(cfg, SHAPE)
    scores = det.score(test, merged, image_size=16)
    assert scores.maps.shape == (4, 16, 16) and scores.image.shape == (4,)
    assert int(scores.image.argmax()) == 2
    assert float(scores.image[2]) > 2 * float(scores.image[[0, 1, 3]].max())
    assert det.inversions == 1 and det.fingerprints == 1
    for _ in range(3):  # the same arrays again (every call of fedad-predict): no new hash
        det.score(test[:1], dict(merged), image_size=16)
    assert det.inversions == 1 and det.fingerprints == 1
    again = det.score(test, {k: v.copy() for k, v in merged.items()}, image_size=16)
    assert det.inversions == 1 and det.fingerprints == 2  # same contents: no new inversion
    assert torch.equal(again.image, scores.image)
    other = det.merge([merged, merged], 1)
    det.score(test, other, image_size=16)
    assert det.inversions == 2
    # a summary that differs off the diagonal only is another model: inverted anew
    tweaked = {k: v.copy() for k, v in other.items()}
    tweaked["scatter"][0, 1] *= 0.5
    changed = det.score(test, tweaked, image_size=16)
    assert det.inversions == 3
    assert not torch.equal(changed.maps, det.score(test, other, image_size=16).maps)


def test_score_rejects_a_malformed_global_summary():
    cfg = make_cfg()
    _, merged = federated(cfg, client_features())
    det = PaDiM(cfg, SHAPE)
    with pytest.raises(BankError, match="global summary"):
        det.score(client_features((1,))[0], {"count": merged["count"], "mean": merged["mean"]}, 8)


def test_state_is_empty_scoring_needs_only_the_global_summary():
    cfg = make_cfg()
    _, merged = federated(cfg, client_features())
    det = PaDiM(cfg, SHAPE)
    det.fit(client_features((3,))[0], None, 1)
    assert det.state() == {}
    x = client_features((2,))[0]
    fresh = PaDiM(cfg, SHAPE, seed=5)
    fresh.load_state(det.state())
    assert torch.equal(fresh.score(x, merged, 8).image, det.score(x, merged, 8).image)


def test_singular_covariance_falls_back_to_pseudo_inverse():
    idx = channel_subset(12, D, 0)
    _, cov = gaussian(stats_of(client_features((3,))[0], idx), 0.0)  # rank 2 < 8
    inv = inverse_covariance(cov, torch.float64)
    assert torch.isfinite(inv).all()
    ref = np.linalg.pinv(cov[0], hermitian=True)
    assert rel_err(inv[0].numpy(), ref) < 1e-6


def test_padim_reads_raw_features_and_patchcore_pooled_ones():
    """Each detector chooses its feature pooling: PaDiM the raw layer features (as published
    and in anomalib), PatchCore 3x3-averaged ones (locally aware patches, Sec. 3.1)."""
    from fedad.detectors.registry import feature_config

    assert feature_config(RunConfig(detector="padim")).backbone.avg_pool is False
    assert feature_config(RunConfig(detector="patchcore")).backbone.avg_pool is True
    assert feature_config(RunConfig(detector="feddymem")).backbone.avg_pool is True
    pooled = RunConfig(detector="padim", padim=PaDiMConfig(avg_pool=True))
    assert feature_config(pooled).backbone.avg_pool is True
