"""Shared components (k-NN, K-means, the upload validator), FedDyMem's K-means aggregation
(Alg. 3), scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from fedad.components.kmeans import kmeans
from fedad.components.knn import NearestNeighbours, torch_knn
from fedad.components.maps import anomaly_maps, gaussian_blur, image_scores, patch_scores
from fedad.components.validate import check_bank, check_state
from fedad.detectors.base import summary_nbytes
from fedad.detectors.feddymem.aggregate import aggregate, average_aggregate, kmeans_aggregate
from fedad.errors import BankError


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(6, 5, 7, generator=g)
    q = torch.randn(40, 7, generator=g)
    dist, idx = NearestNeighbours(bank).search(q, 3)
    full = torch.cdist(q, bank.reshape(-1, 7))
    ref_d, ref_i = full.topk(3, largest=False)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist, ref_d, atol=1e-4)


def test_torch_knn_equals_faiss_and_carries_gradients():
    """The differentiable path finds the same neighbours at the same distances as faiss
    (float tolerance), in chunks, and its distances have gradients to the queries."""
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 7, generator=g)
    q = torch.randn(33, 7, generator=g, requires_grad=True)
    dist, idx = torch_knn(q, bank, 3, chunk=8)
    ref_d, ref_i = NearestNeighbours(bank).search(q.detach(), 3)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist.detach(), ref_d, atol=1e-5)
    dist[:, 0].sum().backward()
    expect = (q.detach() - bank[ref_i[:, 0]]) / ref_d[:, :1]  # d|q - b| / dq
    assert torch.allclose(q.grad, expect, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the bank size"):
        torch_knn(q, bank[:2], 3)


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
    with pytest.raises(ValueError, match="positional, kmeans\\+\\+, random"):
        kmeans_aggregate(banks, init="forgy")


def test_kmeans_on_rows_takes_starting_centres_and_names_bad_ones():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 4, generator=g)
    a, b = kmeans(rows, 5, seed=3), kmeans(rows, 5, seed=3)
    assert a.shape == (5, 4) and torch.equal(a, b)
    start = rows[:5].clone()
    assert torch.isfinite(kmeans(rows, 5, init=start)).all()
    with pytest.raises(ValueError, match="starting centres of shape"):
        kmeans(rows, 5, init=rows[:4])
    with pytest.raises(BankError, match="40 rows for K=41"):
        kmeans(rows, 41)


def test_average_aggregate_and_dispatch():
    banks = [torch.zeros(2, 2, 3), torch.ones(2, 2, 3)]
    assert torch.allclose(average_aggregate(banks), torch.full((2, 2, 3), 0.5))
    assert torch.equal(aggregate(banks, "average"), average_aggregate(banks))
    with pytest.raises(ValueError, match="kmeans or average"):
        aggregate(banks, "median")


def test_summary_bytes():
    assert summary_nbytes({"bank": np.zeros((56, 56, 176), np.float32)}) == 56 * 56 * 176 * 4
    assert summary_nbytes({"a": np.zeros((2, 2, 3), np.float16), "b": np.zeros(1)}) == 32


@pytest.mark.parametrize(
    ("bank", "match"),
    [
        ("not a bank", "client 3: 'bank' is a str"),
        (torch.zeros(4, 4), r"client 3: 'bank' has shape \(4, 4\), expected 3 dimensions"),
        (torch.zeros(4, 4, 2, dtype=torch.int32), "expected floating point"),
        (torch.tensor([[[1.0, float("nan")]]]), "1 non-finite"),
        (torch.tensor([[[float("inf"), 0.0]]]), "non-finite"),
        (torch.zeros(2, 2, 3), r"expected \(2, 2, 4\)"),
        (np.full((2, 2, 4), 1e300), "overflows float32"),
    ],
)
def test_check_bank_names_the_client(bank, match):
    with pytest.raises(BankError, match=match):
        odd = getattr(bank, "shape", None) == (2, 2, 3)
        check_bank(bank, "client 3", shape=(2, 2, 4) if odd else (None, None, None))


def test_check_bank_accepts_numpy():
    out = check_bank(np.ones((2, 2, 3), dtype=np.float64), "client 0", (2, 2, None))
    assert out.dtype == torch.float32 and out.shape == (2, 2, 3)


def test_check_state_names_the_client_and_the_tensor():
    ref = {"w": (2, 3), "b": (3,)}
    good = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    assert set(check_state(good, "client 1", ref)) == {"w", "b"}
    for bad, says in [({"w": good["w"]}, r"missing \['b'\]"),
                      ({**good, "x": good["b"]}, r"unexpected \['x'\]"),
                      ({**good, "b": np.zeros(4, np.float32)}, r"weights\[b\]' has shape"),
                      ({**good, "b": np.array([0, 1, np.nan], np.float32)}, "non-finite"),
                      ({**good, "b": np.zeros(3, np.int64)}, "floating point")]:
        with pytest.raises(BankError, match=f"client 1: .*{says}"):
            check_state(bad, "client 1", ref)


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
