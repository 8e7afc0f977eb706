"""FedDyMem head, metric loss (Eq. 12), memory-reduce (Eq. 14-16) and the client procedure."""

from __future__ import annotations

import math

import pytest
import torch

from fedad.config.schema import ScoreConfig, TrainConfig
from fedad.detectors.feddymem.client import FedDyMemClient
from fedad.detectors.feddymem.config import HeadConfig
from fedad.detectors.feddymem.generator import MemoryGenerator, coordinate_channels, sample_grid
from fedad.detectors.feddymem.head import FedDyMemHead
from fedad.detectors.feddymem.loss import metric_loss, positions
from fedad.detectors.feddymem.reduce import memory_reduce, reduce_weights
from fedad.errors import BankError


def test_head_keeps_shape_and_ablation_identity():
    x = torch.randn(2, 6, 5, 7)
    head = FedDyMemHead(6, HeadConfig(grid_size=4, phi_hidden=8))
    assert head(x).shape == (2, 6, 5, 7)
    bare = FedDyMemHead(6, HeadConfig(projection=False, generator=False))
    assert torch.equal(bare(x), x)
    assert not bare.trainable
    only_proj = FedDyMemHead(6, HeadConfig(generator=False))
    assert only_proj(x).shape == x.shape and only_proj.trainable


def test_coordinates_span_minus_one_to_one():
    c = coordinate_channels(1, 3, 5, torch.device("cpu"), torch.float32)
    assert c.shape == (1, 2, 3, 5)
    assert torch.allclose(c[0, 0, 0], torch.linspace(-1, 1, 5))  # X varies along width
    assert torch.allclose(c[0, 1, :, 0], torch.linspace(-1, 1, 3))  # Y along height


def test_grid_sampling_matches_eq_10_11_by_hand():
    torch.manual_seed(0)
    grid = torch.randn(3, 4, 5)  # C=3, Hg=4, Wg=5
    px, py = 0.3, -0.6
    out = sample_grid(grid, torch.tensor([[[[px, py]]]]))[0, :, 0, 0]
    # Eq. 10: normalised coordinates; Eq. 11: bilinear weights of the 4 neighbours.
    tx, ty = (px + 1) / 2 * (5 - 1), (py + 1) / 2 * (4 - 1)
    x0, y0 = math.floor(tx), math.floor(ty)
    expect = torch.zeros(3)
    for m in (0, 1):
        for n in (0, 1):
            w = (1 - abs(tx - (x0 + n))) * (1 - abs(ty - (y0 + m)))
            expect += w * grid[:, y0 + m, x0 + n]
    assert torch.allclose(out, expect, atol=1e-6)


def test_generator_grid_is_trainable_and_used():
    torch.manual_seed(0)
    gen = MemoryGenerator(4, grid_size=8, phi_hidden=8)
    assert gen.grid.shape == (4, 8, 8)
    out = gen(torch.randn(2, 4, 6, 6)).sum()
    out.backward()
    assert gen.grid.grad is not None and gen.grid.grad.abs().sum() > 0


def test_metric_loss_by_hand():
    # Two patches in 2-D, bank of three features, K = 2, th = 0.5.
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    idx = torch.tensor([[0, 1], [2, 1]])
    # distances: [1, 2] and [0, sqrt(9+4)]; minus th, clamped at 0: [0.5, 1.5], [0, 3.1056]
    expect = (0.5 + 1.5 + 0.0 + (math.sqrt(13) - 0.5)) / 4
    assert metric_loss(feats, bank, idx, threshold=0.5).item() == pytest.approx(expect)


def test_metric_loss_is_zero_within_threshold_and_has_gradient_outside():
    bank = torch.zeros(1, 3)
    near = torch.full((4, 3), 0.001, requires_grad=True)
    assert metric_loss(near, bank, torch.zeros(4, 1, dtype=torch.long), 0.01).item() == 0.0
    far = torch.ones(4, 3, requires_grad=True)
    metric_loss(far, bank, torch.zeros(4, 1, dtype=torch.long), 0.01).backward()
    assert far.grad.abs().sum() > 0


def test_positions_layout():
    m = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    p = positions(m)
    assert p.shape == (8, 3)
    assert torch.equal(p[1], m[0, :, 0, 1])


def test_memory_reduce_round_zero_is_plain_mean():
    mem = torch.randn(5, 2, 3, 4)
    assert torch.allclose(memory_reduce([mem[:2], mem[2:]], None, 0), mem.mean(0), atol=1e-6)


def test_memory_reduce_eq_14_16_by_hand():
    prev = torch.zeros(1, 1, 2)
    m1 = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)  # ||m1 - prev|| = 5 -> w = 1/5
    m2 = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)  # ||m2 - prev|| = 1 -> w = 1
    w = reduce_weights(torch.cat([m1, m2]), prev, 1)
    assert torch.allclose(w, torch.tensor([0.2, 1.0]))
    bar = (0.2 * torch.tensor([3.0, 4.0]) + torch.tensor([0.0, 1.0])) / 1.2  # Eq. 14
    for t in (1, 3):
        alpha = 1 / (t + 1)  # Eq. 16
        expect = alpha * bar + (1 - alpha) * prev.view(2)
        got = memory_reduce([m1, m2], prev, t)
        assert got.shape == (1, 1, 2)
        assert torch.allclose(got.view(2), expect, atol=1e-6)


def test_memory_reduce_needs_previous_after_round_zero():
    with pytest.raises(BankError, match="previous bank"):
        memory_reduce([torch.ones(1, 1, 1, 2)], None, 2)
    with pytest.raises(BankError, match="no memory"):
        memory_reduce([], None, 0)


def _cluster_features(n: int, c: int = 8, h: int = 4, w: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, c, 1, 1, generator=g) + 0.1 * torch.randn(n, c, h, w, generator=g)


def test_client_round_trip_shapes_and_loss_decreases():
    feats = _cluster_features(12)
    cfg = TrainConfig(local_epochs=4, batch_size=4, lr=1e-2)
    client = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8), cfg, seed=0)
    bank0 = client.initial_bank(feats)
    assert bank0.shape == (4, 4, 8) and torch.isfinite(bank0).all()
    bank1, losses = client.train_round(feats, bank0, 1)
    assert bank1.shape == bank0.shape and len(losses) == 4
    assert losses[-1] < losses[0]
    test = torch.cat([_cluster_features(3), _cluster_features(3) + 3.0])
    scores = client.score(test, bank1, image_size=16, cfg=ScoreConfig(top_k=3))
    assert scores.maps.shape == (6, 16, 16) and scores.image.shape == (6,)
    assert scores.image[3:].min() > scores.image[:3].max()  # shifted features score higher


def test_client_state_round_trip_reproduces_training():
    feats = _cluster_features(8)
    cfg = TrainConfig(local_epochs=1, batch_size=4)
    a = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8), cfg, seed=3)
    bank = a.initial_bank(feats)
    b = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8), cfg, seed=99)
    b.load_state_dict(a.state_dict())
    a.train_epochs(feats, bank)
    b.train_epochs(feats, bank)
    for pa, pb in zip(a.head.parameters(), b.head.parameters(), strict=False):
        assert torch.allclose(pa, pb)


def test_client_arrays_round_trip_reproduces_training():
    feats = _cluster_features(8)
    cfg = TrainConfig(local_epochs=1, batch_size=4)
    a = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8, batch_norm=True), cfg, seed=3)
    bank = a.initial_bank(feats)
    a.train_epochs(feats, bank)  # Adam has moments now
    b = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8, batch_norm=True), cfg, seed=4)
    arrays = a.to_arrays()
    assert any(k.startswith("optim.") for k in arrays)
    assert all(isinstance(v, torch.Tensor) for v in arrays.values())
    b.load_arrays(arrays)
    a.train_epochs(feats, bank)
    b.train_epochs(feats, bank)
    for pa, pb in zip(a.head.parameters(), b.head.parameters(), strict=True):
        assert torch.allclose(pa, pb)


def test_client_with_batchnorm_trains():
    feats = _cluster_features(5)
    client = FedDyMemClient(8, HeadConfig(grid_size=4, phi_hidden=8, batch_norm=True),
                            TrainConfig(batch_size=4), seed=0)
    bank = client.initial_bank(feats)
    losses = client.train_epochs(feats, bank)  # last batch has 1 image: skipped, no crash
    assert len(losses) == 1 and math.isfinite(losses[0])


def test_a_client_draws_its_head_without_touching_the_global_rng():
    """Clients sharing a process (a Ray actor hosts several) must not reseed each other:
    building one leaves the global generator as it was, and the same seed still gives the
    same head."""
    from fedad.detectors.feddymem.client import FedDyMemClient

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = FedDyMemClient(8, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = FedDyMemClient(8, seed=3)
    c = FedDyMemClient(8, seed=4)
    sa, sb, sc = (x.head.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
