"""FedDyMem's switches beyond the paper (issue 10), on tiny tensors: the set memory-reduce
(coreset / K-means with Eq. 15 weights), matched rEMA, the coreset merge and CFA's
repulsive term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedad.components.knn import NearestNeighbours
from fedad.config.schema import RunConfig
from fedad.detectors.base import FeatureShape
from fedad.detectors.feddymem.detector import FedDyMem
from fedad.detectors.feddymem.loss import bank_spacing, repulsive_loss
from fedad.detectors.feddymem.set_reduce import (
    matched_rema,
    set_reduce,
    set_weights,
    weighted_kmeans,
)
from fedad.errors import BankError, ConfigError


def _memories(seed: int = 0, b: int = 6, h: int = 4, w: int = 4, c: int = 8) -> torch.Tensor:
    return torch.randn(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_kmeans_reduce_gives_hw_finite_centres_deterministic_for_a_seed():
    mem = _memories()
    a = set_reduce([mem[:3], mem[3:]], 16, "kmeans", None, 0, seed=1)
    b = set_reduce([mem], 16, "kmeans", None, 0, seed=1)
    assert a.shape == (16, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # batching does not matter, the seed decides
    c = set_reduce([mem], 16, "kmeans", None, 0, seed=2)
    assert not torch.equal(a, c)


def test_set_weights_are_eq15_with_the_nearest_bank_feature():
    mem = _memories(b=3)
    prev = torch.randn(5, 8, generator=torch.Generator().manual_seed(9))
    w = set_weights(mem, NearestNeighbours(prev))
    d = torch.cdist(mem.reshape(3, -1, 8).double(), prev.double()).amin(-1)  # (3, HW)
    assert w.numpy() == pytest.approx((1.0 / d.square().sum(1).sqrt()).numpy(), rel=1e-5)
    assert torch.equal(set_weights(mem, None), torch.ones(3, dtype=torch.float64))


def test_weighted_kmeans_uses_the_sample_weights():
    rows = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    centre = weighted_kmeans(rows, torch.tensor([3.0, 1.0]), 1, seed=0)
    assert centre[0].numpy() == pytest.approx([2.5, 0.0], abs=1e-5)  # weighted mean
    # the image nearer the previous bank weighs more (Eq. 15): its patches pull the centre
    mem = torch.stack([torch.zeros(2, 2, 2), torch.full((2, 2, 2), 4.0)])
    prev = torch.full((1, 2), 1.0)
    reps = set_reduce([mem], 1, "kmeans", prev, 1, rema=False)
    w = set_weights(mem, NearestNeighbours(prev))
    expected = float(4.0 * w[1] / w.sum())
    assert reps[0].numpy() == pytest.approx([expected, expected], rel=1e-4)
    assert expected < 2.0  # pulled towards the nearer image, not the plain mean


def test_coreset_reduce_keeps_real_memory_features_including_the_rare_one():
    mem = torch.zeros(4, 3, 3, 2)
    mem[..., 0] = torch.linspace(0, 1, 36).reshape(4, 3, 3)
    mem[2, 1, 1] = torch.tensor([50.0, 50.0])  # one rare patch, far from the others
    reps = set_reduce([mem], 5, "coreset", None, 0)
    rows = mem.reshape(-1, 2)
    assert all((rows == r).all(1).any() for r in reps)  # a subset of the input
    assert (reps == torch.tensor([50.0, 50.0])).all(1).any()  # the rare patch is kept
    with pytest.raises(BankError, match="needs the previous bank"):
        set_reduce([mem], 5, "coreset", None, 1)
    everything = set_reduce([mem], 40, "coreset", None, 0)  # a small client keeps all it has
    assert everything.shape == (36, 2) and torch.equal(everything[:5], reps)


def test_matched_rema_mixes_each_representative_with_its_nearest_bank_feature():
    prev = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    reps = torch.tensor([[9.0, 9.0], [1.0, 0.0]])
    out = matched_rema(reps, prev, 3)  # a = 1/4
    assert out.numpy() == pytest.approx(np.array([[9.75, 9.75], [0.25, 0.0]]))


def test_repulsive_term_is_zero_beyond_the_margin_and_pushes_within_it():
    feats = torch.zeros(2, 2, requires_grad=True)
    bank = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.5, 0.0]])
    far = torch.tensor([[0, 1], [0, 1]])
    assert float(repulsive_loss(feats, bank, far, margin=2.0).detach()) == 0.0
    near = torch.tensor([[2], [2]])
    loss = repulsive_loss(feats, bank, near, margin=2.0)
    assert float(loss.detach()) == pytest.approx(1.5)
    loss.backward()
    assert feats.grad[0, 0] > 0  # a descent step (-grad) moves the patch away, to -x
    assert bank_spacing(bank) == pytest.approx(2.5)  # nearest other feature: 2.5, 3.04, 2.5


def _set_detector(**knobs) -> FedDyMem:
    cfg = RunConfig()
    cfg.feddymem.reduce, cfg.feddymem.aggregation = "coreset", "coreset"
    for k, v in knobs.items():
        setattr(cfg.feddymem, k, v)
    return FedDyMem(cfg, FeatureShape(8, 4, 4))


def test_set_bank_detector_uploads_k_rows_and_merges_by_coreset_or_kmeans():
    feats = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    det = _set_detector(bank_size=10)
    det.fit(feats, None, 0)
    up = det.summarize(0)
    assert up["bank"].shape == (10, 8)
    ok = det.validate(up, "client 0")
    with pytest.raises(BankError, match="client 3"):
        det.validate({"bank": np.zeros((4, 4, 8), np.float32)}, "client 3")
    bad = up["bank"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(BankError, match="client 4.*non-finite"):
        det.validate({"bank": bad}, "client 4")
    merged = det.merge([ok, det.validate(up, "client 1")], 1)["bank"]
    assert merged.shape == (10, 8)
    union = np.concatenate([ok["bank"], ok["bank"]])
    assert all((union == r).all(1).any() for r in merged)  # coreset of the union
    small = det.validate({"bank": up["bank"][:4]}, "client 2")  # a small client: 4 rows
    assert small["bank"].shape == (4, 8)
    with pytest.raises(BankError, match=r"client 5.*expected at most 10"):
        det.validate({"bank": np.zeros((11, 8), np.float32)}, "client 5")
    assert det.merge([small], 2)["bank"].shape == (4, 8)  # fewer rows than K in all
    km = _set_detector(bank_size=10, aggregation="kmeans")
    assert km.merge([small, small], 2)["bank"].shape == (8, 8)
    assert km.merge([ok, ok], 1)["bank"].shape == (10, 8)
    # a round after the first trains against the global bank and reduces again
    det.fit(feats, {"bank": merged}, 1)
    assert det.summarize(1)["bank"].shape == (10, 8)


def test_set_bank_switches_are_checked():
    with pytest.raises(ConfigError, match="feddymem.reduce must be one of"):
        _set_detector(reduce="median")
    with pytest.raises(ConfigError, match="has none"):
        _set_detector(aggregation="average")
    with pytest.raises(ConfigError, match="feddymem.aggregation must be one of"):
        _set_detector(aggregation="mean")
    with pytest.raises(ConfigError, match=r"feddymem.anchor = -1.0: must be >= 0"):
        _set_detector(anchor=-1.0)


def test_relative_threshold_leaves_patches_within_the_bank_spacing_alone():
    from fedad.config.schema import TrainConfig
    from fedad.detectors.feddymem.client import FedDyMemClient
    from fedad.detectors.feddymem.config import FedDyMemConfig, HeadConfig

    feats = torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    for scale, moves in ((100.0, False), (0.0, True)):
        client = FedDyMemClient(8, HeadConfig(init="identity"), TrainConfig(batch_size=2),
                                seed=0, memory=FedDyMemConfig(threshold_scale=scale))
        bank = client.initial_bank(feats)
        before = [p.detach().clone() for p in client.head.parameters()]
        loss = client.train_epochs(feats, bank, epochs=1)[0]
        changed = any(not torch.equal(a, b) for a, b in zip(before, client.head.parameters(),
                                                            strict=True))
        assert (loss == 0.0) is not moves and changed is moves


def test_identity_init_starts_the_head_as_the_activated_features():
    from fedad.detectors.feddymem.config import HeadConfig
    from fedad.detectors.feddymem.head import FedDyMemHead

    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    head = FedDyMemHead(8, HeadConfig(init="identity"))
    assert torch.allclose(head(x), torch.nn.functional.leaky_relu(x, 0.2), atol=1e-6)
    with pytest.raises(ConfigError, match="head.init"):
        FedDyMemHead(8, HeadConfig(init="zeros"))


def test_initial_target_keeps_the_round_0_global_bank_for_training_and_scoring():
    feats = torch.randn(6, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    sites = []
    for seed in (0, 1):
        cfg = RunConfig()
        cfg.feddymem.target = "initial"
        sites.append(FedDyMem(cfg, FeatureShape(8, 4, 4), seed=seed))
    for det in sites:
        det.fit(feats, None, 0)
    first = sites[0].merge([d.summarize(0) for d in sites], 0)
    for det in sites:
        before = [p.detach().clone() for p in det.module().parameters()]
        det.fit(feats, first, 1)
        assert np.array_equal(det.summarize(1)["bank"], first["bank"])  # not reduced again
        assert any(not torch.equal(a, b) for a, b in zip(before, det.module().parameters(),
                                                         strict=True))  # but trained
    merged = sites[0].merge([d.summarize(1) for d in sites], 1)
    assert np.array_equal(merged["bank"], first["bank"])
    # the paper's default rebuilds the bank from the trained heads
    paper = FedDyMem(RunConfig(), FeatureShape(8, 4, 4), seed=0)
    paper.fit(feats, None, 0)
    paper.fit(feats, first, 1)
    assert not np.array_equal(paper.summarize(1)["bank"], first["bank"])


def test_squared_distance_is_cfas_form_of_both_terms():
    from fedad.detectors.feddymem.loss import metric_loss

    feats = torch.tensor([[3.0, 4.0]])
    bank = torch.zeros(2, 2)
    idx = torch.tensor([[0]])
    assert float(metric_loss(feats, bank, idx, 1.0)) == pytest.approx(4.0)  # 5 - 1
    assert float(metric_loss(feats, bank, idx, 1.0, squared=True)) == pytest.approx(24.0)
    assert float(repulsive_loss(feats, bank, idx, 6.0, squared=True)) == pytest.approx(11.0)
    assert float(repulsive_loss(feats, bank, idx, 6.0)) == pytest.approx(1.0)


def test_anchor_holds_the_head_near_its_start():
    from fedad.config.schema import TrainConfig
    from fedad.detectors.feddymem.client import FedDyMemClient
    from fedad.detectors.feddymem.config import FedDyMemConfig, HeadConfig

    feats = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    bank = torch.zeros(4, 4, 8)  # every feature far from the bank: Eq. 12 pulls hard
    moved = {}
    for anchor in (0.0, 100.0):
        client = FedDyMemClient(8, HeadConfig(), TrainConfig(batch_size=4, lr=1e-2), seed=0,
                                memory=FedDyMemConfig(anchor=anchor))
        with torch.no_grad():
            start = client.head(feats)
        client.train_epochs(feats, bank, epochs=5)
        with torch.no_grad():
            moved[anchor] = float((client.head(feats) - start).square().mean())
        # a client rebuilt from its seed (a Flower round) anchors to the same start
        again = FedDyMemClient(8, HeadConfig(), TrainConfig(), seed=0,
                               memory=FedDyMemConfig(anchor=anchor))
        if anchor:
            assert torch.equal(again.start(feats), start)
    assert moved[100.0] < 0.2 * moved[0.0]


def test_generator_paths_sum_to_its_output():
    from fedad.detectors.feddymem.generator import MemoryGenerator

    gen = MemoryGenerator(8, grid_size=4, phi_hidden=16)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(3))
    grid, p_hat = gen.paths(x)
    assert torch.allclose(grid + p_hat + gen.out.bias[:, None, None], gen(x), atol=1e-5)
    assert grid.abs().sum() > 0 and p_hat.abs().sum() > 0
