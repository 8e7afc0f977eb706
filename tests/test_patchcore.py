"""PatchCore: exact lazy greedy coreset (Alg. 1) and the detector contract, on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedad.components import coreset as cs
from fedad.components.coreset import covering_radius, greedy_coreset
from fedad.config.schema import RunConfig
from fedad.detectors.base import Detector, FeatureShape
from fedad.detectors.patchcore.detector import PatchCore, coreset_size
from fedad.errors import BankError, ConfigError


def naive_greedy(features: torch.Tensor, size: int, projection_dim: int, seed: int) -> np.ndarray:
    """Textbook greedy k-center in float64: after each pick, every row's distance to the
    selected set is updated; the next pick is the farthest row."""
    y = cs.project(features, projection_dim, seed).astype(np.float64)
    chosen = [cs.default_start(features)]
    d = np.full(y.shape[0], np.inf)
    while True:
        d = np.minimum(d, ((y - y[chosen[-1]]) ** 2).sum(1))
        d[chosen] = -1.0
        if len(chosen) == size:
            return np.array(chosen)
        chosen.append(int(np.argmax(d)))


def blobs(n: int, dim: int, seed: int = 0, centres: int = 12) -> torch.Tensor:
    """Clustered rows with clusters of different spreads (closer to patch features than
    isotropic noise, and many rows per cluster so the lazy bounds matter)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centres, dim, generator=g) * 4
    which = torch.randint(0, centres, (n,), generator=g)
    spread = torch.rand(centres, generator=g) + 0.2
    return mu[which] + torch.randn(n, dim, generator=g) * spread[which, None]


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny refill pool and blocks, so catch-ups, early exits and refills all happen."""
    monkeypatch.setattr(cs, "_POOL", 37)
    monkeypatch.setattr(cs, "_ROW_BLOCK", 16)
    monkeypatch.setattr(cs, "_PICK_BLOCK", 8)


# -- greedy coreset ----------------------------------------------------------------------------
def test_coreset_is_unique_in_range_int64():
    x = blobs(500, 8)
    idx = greedy_coreset(x, 120)
    assert idx.dtype == torch.int64 and idx.shape == (120,)
    assert len(set(idx.tolist())) == 120
    assert int(idx.min()) >= 0 and int(idx.max()) < 500
    assert int(idx[0]) == int(torch.argmax((x.double() ** 2).sum(1)))  # default start


def test_full_size_selects_every_row_even_with_duplicates():
    x = torch.cat([blobs(40, 4), blobs(40, 4)])  # every row twice
    idx = greedy_coreset(x, 80)
    assert sorted(idx.tolist()) == list(range(80))


@pytest.mark.parametrize("dim,projection_dim", [(16, 128), (48, 12)])
@pytest.mark.parametrize("tiny", [False, True])
def test_coreset_equals_naive_greedy(dim, projection_dim, tiny, request):
    if tiny:
        request.getfixturevalue("small_blocks")
    x = torch.randn(2000, dim, generator=torch.Generator().manual_seed(dim))
    idx = greedy_coreset(x, 600, projection_dim=projection_dim, seed=3)
    ref = naive_greedy(x, 600, projection_dim, seed=3)
    np.testing.assert_array_equal(idx.numpy(), ref)


def test_coreset_equals_naive_on_clustered_rows(small_blocks):
    x = blobs(1500, 24, seed=5)
    np.testing.assert_array_equal(greedy_coreset(x, 400, projection_dim=10, seed=1).numpy(),
                                  naive_greedy(x, 400, 10, seed=1))


def test_explicit_start():
    x = blobs(300, 6)
    idx = greedy_coreset(x, 30, start=17)
    assert int(idx[0]) == 17
    with pytest.raises(ConfigError, match="start"):
        greedy_coreset(x, 30, start=300)
    with pytest.raises(ConfigError, match="size"):
        greedy_coreset(x, 301)
    x[5, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        greedy_coreset(x, 30)


def test_coreset_deterministic_and_seeded():
    x = blobs(800, 40, seed=2)
    a = greedy_coreset(x, 100, projection_dim=8, seed=0)
    assert torch.equal(a, greedy_coreset(x.clone(), 100, projection_dim=8, seed=0))
    assert not torch.equal(a, greedy_coreset(x, 100, projection_dim=8, seed=1))


def test_projection_preserves_distances_roughly():
    x = torch.randn(200, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.from_numpy(cs.project(x, 256, seed=0)).double()
    ratio = torch.pdist(y) / torch.pdist(x)
    assert y.shape == (200, 256)
    assert abs(float(ratio.mean()) - 1.0) < 0.02
    assert 0.75 < float(ratio.min()) and float(ratio.max()) < 1.25
    assert cs.random_projection(64, 128) is None  # no projection up


def test_prefix_consistent(small_blocks):
    x = blobs(1200, 20, seed=4)
    big = greedy_coreset(x, 400, projection_dim=8)
    for k in (1, 7, 150):
        assert torch.equal(greedy_coreset(x, k, projection_dim=8), big[:k])


def test_reselecting_a_coreset_from_itself_keeps_its_order():
    x = blobs(1000, 20, seed=6)
    idx = greedy_coreset(x, 200, projection_dim=8)
    again = greedy_coreset(x[idx], 50, projection_dim=8)
    assert torch.equal(again, torch.arange(50))


def test_covering_radius_matches_brute_force_and_shrinks():
    x = blobs(1500, 6, seed=7)
    idx = greedy_coreset(x, 300)
    for k in (1, 30, 300):
        brute = float(torch.cdist(x.double(), x[idx[:k]].double()).min(1).values.max())
        assert covering_radius(x, idx[:k]) == pytest.approx(brute, rel=1e-4)
    radii = [covering_radius(x, greedy_coreset(x, coreset_size(r, 1500)))
             for r in (0.01, 0.02, 0.05, 0.1, 0.2)]
    assert all(b <= a for a, b in zip(radii, radii[1:], strict=False))
    assert radii[-1] < 0.5 * radii[0]
    g = torch.Generator().manual_seed(0)
    rand = covering_radius(x, torch.randperm(1500, generator=g)[:300])
    assert radii[-1] < rand  # greedy covers better than a random subset of the same size


# -- detector ---------------------------------------------------------------------------------
SHAPE = FeatureShape(channels=8, height=5, width=5)


def make(**patchcore) -> PatchCore:
    cfg = RunConfig()
    for key, value in patchcore.items():
        setattr(cfg.patchcore, key, value)
    cfg.score.sigma = 1.0
    return PatchCore(cfg, SHAPE)


def features(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth normal images: a per-image offset plus small noise, (n, 8, 5, 5)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, SHAPE.channels, 1, 1, generator=g)
    return (base + 0.3 * torch.randn(n, SHAPE.channels, 1, 1, generator=g)
            + 0.1 * torch.randn(n, SHAPE.channels, SHAPE.height, SHAPE.width, generator=g))


def good_summary(rows: int = 10) -> dict[str, np.ndarray]:
    return {"bank": np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32),
            "count": np.array([100], dtype=np.int64)}


def test_protocol_and_attributes():
    det = make()
    assert isinstance(det, Detector)
    assert (det.name, det.iterative, det.first_round) == ("patchcore", False, 1)
    with pytest.raises(ConfigError, match="merge"):
        make(merge="median")
    with pytest.raises(ConfigError, match="upload_ratio"):
        make(upload_ratio=0.0)


def test_coreset_size_rounding():
    assert coreset_size(0.07, 100) == 7
    assert coreset_size(0.1, 596_624) == 59_663
    assert coreset_size(1e-9, 50) == 1 and coreset_size(1.0, 50) == 50
    assert coreset_size(0.5, 50, bound=10) == 10


def test_fit_summarize_keeps_a_coreset_of_the_patches():
    det = make(upload_ratio=0.25)
    feats = features(4)
    info = det.fit(feats, None, 1)
    out = det.summarize(1)
    rows = feats.permute(0, 2, 3, 1).reshape(-1, 8)
    assert set(out) == {"bank", "count"}
    assert out["bank"].dtype == np.float32 and out["bank"].shape == (25, 8)
    assert out["count"].dtype == np.int64 and out["count"].tolist() == [100]
    assert torch.equal(torch.from_numpy(out["bank"]), rows[greedy_coreset(rows, 25)])
    assert info.loss == 0.0 and "coreset" in info.seconds
    with pytest.raises(ConfigError, match="expected"):
        det.fit(torch.zeros(2, 7, 5, 5), None, 1)


@pytest.mark.parametrize("summary,match", [
    ({"bank": good_summary()["bank"]}, "missing"),
    ({**good_summary(), "extra": np.zeros(1)}, "unexpected"),
    ({**good_summary(), "bank": np.zeros((10, 7), np.float32)}, "shape"),
    ({**good_summary(), "bank": np.zeros((2, 10, 8), np.float32)}, "dimensions"),
    ({**good_summary(), "bank": np.full((10, 8), np.nan, np.float32)}, "non-finite"),
    ({**good_summary(), "bank": np.full((10, 8), np.inf, np.float32)}, "non-finite"),
    ({**good_summary(), "bank": np.full((10, 8), 1e300)}, "overflows"),
    ({**good_summary(), "bank": np.zeros((10, 8), np.int64)}, "dtype"),
    ({**good_summary(), "bank": np.zeros((0, 8), np.float32)}, "empty"),
    ({**good_summary(), "count": np.array([100.0])}, "dtype"),
    ({**good_summary(), "count": np.array([100, 1], np.int64)}, "shape"),
    ({**good_summary(), "count": np.array([9], np.int64)}, "fewer"),
    ({**good_summary(40)}, "max_upload_rows"),
    ([1, 2], "mapping"),
])
def test_validate_rejects_naming_the_client(summary, match):
    det = make(max_upload_rows=32)
    with pytest.raises(BankError, match=match) as err:
        det.validate(summary, "client 3")
    assert "client 3" in str(err.value)


def test_validate_accepts_and_normalises_dtypes():
    det = make()
    s = {"bank": good_summary()["bank"].astype(np.float64), "count": np.array([10], np.int32)}
    out = det.validate(s, "client 0")
    assert out["bank"].dtype == np.float32 and out["count"].dtype == np.int64
    np.testing.assert_array_equal(out["bank"], s["bank"].astype(np.float32))


def test_merge_of_one_client_equals_centralized():
    det = make(upload_ratio=0.3, global_ratio=0.05, merge="coreset")
    feats = features(8, seed=3)  # 200 patches: upload 60, global 10
    det.fit(feats, None, 1)
    server = make(upload_ratio=0.3, global_ratio=0.05, merge="coreset")
    up = server.validate(det.summarize(1), "client 0")
    merged = server.merge([up], 1)
    rows = feats.permute(0, 2, 3, 1).reshape(-1, 8)
    central = rows[greedy_coreset(rows, 10, seed=server.cfg.train.seed)]
    assert merged["bank"].shape == (10, 8) and merged["count"].tolist() == [200]
    np.testing.assert_array_equal(merged["bank"], central.numpy())


@pytest.mark.parametrize("merge,rows", [("coreset", 8), ("kmeans", 8), ("concat", 40)])
def test_merge_sizes(merge, rows):
    server = make(upload_ratio=0.2, global_ratio=0.025, merge=merge)
    ups = []
    for i in range(2):
        det = make(upload_ratio=0.2)
        det.fit(features(4 * (i + 1), seed=i), None, 1)  # 100 and 200 patches: 20 + 40 rows
        ups.append(server.validate(det.summarize(1), f"client {i}"))
    ups = ups[1:] if merge == "concat" else ups
    out = server.merge(ups, 1)
    assert out["bank"].dtype == np.float32 and out["bank"].shape == (rows, 8)
    assert out["count"].dtype == np.int64
    assert out["count"].tolist() == ([200] if merge == "concat" else [300])
    assert np.isfinite(out["bank"]).all()
    if merge == "concat":
        np.testing.assert_array_equal(out["bank"], ups[0]["bank"])
    with pytest.raises(BankError):
        server.merge([], 1)


@pytest.mark.parametrize("reweight", [False, True])
def test_score_flags_an_outlier_patch(reweight):
    det = make(upload_ratio=0.5, global_ratio=0.5, reweight=reweight, reweight_k=4)
    train = features(12, seed=0)
    det.fit(train, None, 1)
    bank = det.merge([det.validate(det.summarize(1), "client 0")], 1)
    test = torch.cat([train[:3], features(4, seed=0)])  # normal: the training distribution
    odd = train[3:4].clone()
    odd[0, :, 2, 3] += 6.0  # one far-off patch
    scores = det.score(torch.cat([test, odd]), bank, image_size=20)
    assert scores.maps.shape == (8, 20, 20) and scores.image.shape == (8,)
    assert float(scores.image[-1]) > float(scores.image[:-1].max())
    hot = scores.maps[-1].flatten().argmax()
    assert (int(hot) // 20, int(hot) % 20) != (0, 0)  # the map peaks away from the corner
    empty = det.score(torch.zeros(0, 8, 5, 5), bank, image_size=20)
    assert empty.maps.shape == (0, 20, 20) and empty.image.shape == (0,)


def test_reweight_weights_are_bounded():
    det = make(reweight=True, reweight_k=4)
    bank = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    rows = torch.randn(3, 25, 8, generator=torch.Generator().manual_seed(1))
    from fedad.components.knn import NearestNeighbours

    nn = NearestNeighbours(bank)
    dist, near = nn.search(rows.reshape(-1, 8), 1)
    w = det.reweight(rows, dist[:, 0].view(3, 25), near[:, 0].view(3, 25), bank, nn)
    assert w.shape == (3,)
    assert bool(((w >= 1 - 1 / 4 - 1e-6) & (w < 1)).all())
    assert torch.equal(det.reweight(rows, dist[:, 0].view(3, 25), near[:, 0].view(3, 25),
                                    bank[:1], NearestNeighbours(bank[:1])), torch.ones(3))


def test_state_is_empty_scoring_needs_only_the_global_bank():
    det = make(upload_ratio=0.2)
    with pytest.raises(BankError):
        det.summarize(1)
    det.fit(features(4), None, 1)
    assert det.state() == {}
    glob = det.merge([det.validate(det.summarize(1), "client 0")], 1)
    other = make(upload_ratio=0.2)
    other.load_state(det.state())
    x = features(2)
    assert torch.equal(other.score(x, glob, 16).image, det.score(x, glob, 16).image)

def test_fit_respects_the_upload_bound():
    det = make(upload_ratio=1.0, max_upload_rows=17)
    det.fit(features(2), None, 1)
    assert det.summarize(1)["bank"].shape == (17, 8)
    assert math.isclose(det.summarize(1)["count"][0], 50)


@pytest.mark.parametrize("reweight", [False, True])
def test_image_score_is_the_largest_raw_patch_distance(reweight):
    """Eq. 6-7 as published (and in patchcore-inspection, anomalib): the image score is the
    largest nearest-bank distance over the image's patches, re-weighted at that patch; the
    upsampled, blurred map (pixel metrics) does not decide it. A lone far-off patch makes
    the two differ: blurring spreads its peak."""
    det = make(upload_ratio=0.5, global_ratio=0.5, reweight=reweight, reweight_k=4)
    train = features(12, seed=0)
    det.fit(train, None, 1)
    glob = det.merge([det.validate(det.summarize(1), "client 0")], 1)
    test = features(3, seed=5)
    test[1, :, 2, 3] += 6.0
    scores = det.score(test, glob, image_size=20)
    bank = torch.from_numpy(glob["bank"])
    rows = test.permute(0, 2, 3, 1).reshape(3, 25, 8)
    raw = torch.cdist(rows, bank[None].expand(3, -1, -1)).amin(dim=2)  # (3, 25) brute force
    want = raw.amax(dim=1)
    if reweight:
        from fedad.components.knn import NearestNeighbours

        nn = NearestNeighbours(bank)
        dist, near = nn.search(rows.reshape(-1, 8), 1)
        want = want * det.reweight(rows, dist[:, 0].view(3, 25), near[:, 0].view(3, 25),
                                   bank, nn)
    assert torch.allclose(scores.image, want, rtol=1e-4, atol=1e-4)
    assert float(scores.maps[1].max()) < 0.9 * float(scores.image[1])  # the map is blurred
