"""faiss search and K-means aggregation (Alg. 3), bank validation, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from fedad.errors import BankError
from fedad.memory import (
    NearestNeighbours,
    aggregate,
    average_aggregate,
    bank_nbytes,
    kmeans_aggregate,
    validate_bank,
)
from fedad.scoring import anomaly_maps, gaussian_blur, image_scores, patch_scores


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(6, 5, 7, generator=g)
    q = torch.randn(40, 7, generator=g)
    dist, idx = NearestNeighbours(bank).search(q, 3)
    full = torch.cdist(q, bank.reshape(-1, 7))
    ref_d, ref_i = full.topk(3, largest=False)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist, ref_d, atol=1e-4)


def test_kmeans_aggregate_shape_determinism_and_seed():
    g = torch.Generator().manual_seed(0)
    banks = [torch.randn(4, 4, 8, generator=g) + i for i in range(3)]
    a = kmeans_aggregate(banks, seed=1, init="kmeans++")
    b = kmeans_aggregate(banks, seed=1, init="kmeans++")
    c = kmeans_aggregate(banks, seed=2, init="kmeans++")
    assert a.shape == (4, 4, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    p1, p2 = kmeans_aggregate(banks, seed=1), kmeans_aggregate(banks, seed=2)
    assert torch.equal(p1, p2) and torch.isfinite(p1).all()  # positional init: no randomness


def test_kmeans_finds_separated_clusters():
    # 16 tight clusters, each present in every client's bank: K-means recovers the centres.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(16, 8, generator=g) * 10
    banks = [(centres + 0.01 * torch.randn(16, 8, generator=g)).reshape(4, 4, 8)
             for _ in range(3)]
    out = kmeans_aggregate(banks, seed=0, niter=30, init="kmeans++").reshape(16, 8)
    d = torch.cdist(centres, out).min(dim=1).values
    assert d.max() < 0.1


def test_positional_init_keeps_each_position_feature_in_place():
    # Clients hold the same 16 position features up to noise: the centre stored at (h, w)
    # must be that position's feature (memory-reduce compares banks position by position).
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 4, 8, generator=g) * 5
    banks = [base + 0.01 * torch.randn(4, 4, 8, generator=g) for _ in range(5)]
    out = kmeans_aggregate(banks, seed=0)
    assert torch.allclose(out, base, atol=0.05)
    shuffled = kmeans_aggregate(banks, seed=0, init="kmeans++")
    assert not torch.allclose(shuffled, base, atol=0.05)  # same set, other order
    with pytest.raises(ValueError, match="positional, kmeans\\+\\+ or random"):
        kmeans_aggregate(banks, init="forgy")


def test_average_aggregate_and_dispatch():
    banks = [torch.zeros(2, 2, 3), torch.ones(2, 2, 3)]
    assert torch.allclose(average_aggregate(banks), torch.full((2, 2, 3), 0.5))
    assert torch.equal(aggregate(banks, "average"), average_aggregate(banks))
    with pytest.raises(ValueError, match="kmeans or average"):
        aggregate(banks, "median")


def test_bank_bytes():
    assert bank_nbytes(torch.zeros(56, 56, 176)) == 56 * 56 * 176 * 4
    assert bank_nbytes(np.zeros((2, 2, 3), dtype=np.float16)) == 24


@pytest.mark.parametrize(
    ("bank", "match"),
    [
        ("not a bank", "client 3: bank is a str"),
        (torch.zeros(4, 4), r"client 3: bank has shape \(4, 4\)"),
        (torch.zeros(4, 4, 2, dtype=torch.int32), "not floating point"),
        (torch.tensor([[[1.0, float("nan")]]]), "1 non-finite"),
        (torch.tensor([[[float("inf"), 0.0]]]), "non-finite"),
        (torch.zeros(2, 2, 3), r"expected \(2, 2, 4\)"),
    ],
)
def test_validate_bank_names_the_client(bank, match):
    with pytest.raises(BankError, match=match):
        validate_bank(bank, "client 3", shape=(2, 2, 4) if torch.is_tensor(bank) and
                      bank.shape == (2, 2, 3) else None)


def test_validate_bank_accepts_numpy():
    out = validate_bank(np.ones((2, 2, 3), dtype=np.float64), "client 0")
    assert out.dtype == torch.float32 and out.shape == (2, 2, 3)


def test_patch_scores_softmin_and_nearest():
    d = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 9.0]])
    assert torch.allclose(patch_scores(d, "nearest"), torch.tensor([1.0, 1.0]))
    s = patch_scores(d, "softmin")
    assert s[0].item() == pytest.approx(1 / 3)  # three equal neighbours: d / 3
    w = 1 / (1 + np.exp(-4) + np.exp(-8))
    assert s[1].item() == pytest.approx(w)  # a lone nearest keeps almost its distance
    with pytest.raises(ValueError, match="softmin or nearest"):
        patch_scores(d, "max")


def test_gaussian_blur_matches_scipy_inside():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 64, 64, generator=g)
    ours = gaussian_blur(x, 2.0)[0].numpy()
    ref = gaussian_filter(x[0].numpy().astype(np.float64), sigma=2.0, mode="mirror")
    assert np.allclose(ours, ref, atol=1e-5)


def test_anomaly_maps_upsample_and_image_score_is_max():
    patch = torch.zeros(2, 4, 4)
    patch[1, 2, 2] = 1.0
    maps = anomaly_maps(patch, 32, sigma=1.0)
    assert maps.shape == (2, 32, 32)
    scores = image_scores(maps)
    assert scores[0] == 0 and scores[1] > 0
    assert scores[1] == maps[1].max()
