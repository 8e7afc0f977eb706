"""F2PAD's objective terms, gradient sharing and step (fedad/refinements/f2pad/) against
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedad.errors import ConfigError
from fedad.refinements.f2pad.losses import (
    log_sparsity,
    objective,
    pixel_prior,
    total_variation,
)
from fedad.refinements.f2pad.prior import fit_pixel_prior, sample_pixels
from fedad.refinements.f2pad.sharing import shared_direction, sharing_weights
from fedad.refinements.f2pad.step import clipped, grey_level, step_sizes


def image(*pixels: tuple[float, float, float], h: int = 1) -> torch.Tensor:
    """``(3, h, len/h)`` from RGB pixels in row-major order."""
    t = torch.tensor(pixels, dtype=torch.float64)  # (P, 3)
    return t.T.reshape(3, h, -1)


def test_log_sparsity_is_eq_8():
    a = image((0, 0, 0), (3, 4, 0))  # colour norms 0 and 5
    want = math.log(math.sqrt(1e-4)) + math.log(math.sqrt(25 + 1e-4) + 5)
    assert float(log_sparsity(a)) == pytest.approx(want, abs=1e-4)
    only_second = torch.tensor([[0.0, 1.0]])
    assert float(log_sparsity(a, only_second)) == pytest.approx(
        math.log(math.sqrt(25 + 1e-4) + 5), abs=1e-6)
    a.requires_grad_(True)
    log_sparsity(a).backward()
    assert torch.isfinite(a.grad).all()  # finite at a = 0 too


def test_pixel_prior_is_the_nearest_component_mahalanobis_eq_10():
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    inv = torch.stack([torch.eye(3), 2 * torch.eye(3)])
    n = image((1, 1, 1), (0, 0, 0.5))
    # pixel 0: 3 (component 0) vs 0 (component 1); pixel 1: 0.25 vs 2 * 2.25 = 4.5
    assert float(pixel_prior(n, means, inv)) == pytest.approx(0.25)
    assert float(pixel_prior(n, means, inv, torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.0)


def test_total_variation_is_eq_11():
    # 2 x 2 image: right pairs (0,0)-(3,4,0) and (0,0,1)-(0,0,1); down pairs (0,0,0)-(0,0,1)
    # and (3,4,0)-(0,0,1)
    n = image((0, 0, 0), (3, 4, 0), (0, 0, 1), (0, 0, 1), h=2)
    want = 5 + 0 + 1 + math.sqrt(9 + 16 + 1)
    assert float(total_variation(n)) == pytest.approx(want, abs=1e-5)
    first_only = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # pairs starting at pixel (0, 0)
    assert float(total_variation(n, first_only)) == pytest.approx(5 + 1, abs=1e-5)


def test_objective_is_eq_12_and_beta_zero_drops_the_sparsity_term():
    means, inv = torch.zeros(1, 3), torch.eye(3)[None]
    x = image((1, 0, 0), (0, 2, 0))
    n = image((0.5, 0, 0), (0, 1, 0))
    ln = torch.tensor(7.0, dtype=torch.float64)
    got = objective(ln, n, x, means, inv, alpha1=0.1, alpha2=0.01, beta=2.0)
    want = (7 + 0.1 * pixel_prior(n, means, inv) + 0.01 * total_variation(n)
            + 2 * log_sparsity(x - n))
    assert float(got) == pytest.approx(float(want))
    re = objective(ln, n, x, means, inv, alpha1=0.1, alpha2=0.01, beta=0.0)
    assert float(re) == pytest.approx(float(want - 2 * log_sparsity(x - n)))


def test_sharing_weights_sum_to_one_favour_near_similar_pixels_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 8, generator=g, dtype=torch.float64)
    x[:, :, 4:] += 5.0  # a sharp colour edge down the middle
    w = sharing_weights(x, k_s=2)
    assert w.shape == (25, 9, 8)
    assert torch.allclose(w.sum(0), torch.ones(9, 8, dtype=torch.float64))
    # a corner pixel shares with nobody outside the image: its out-of-image weights are 0
    corner = w[:, 0, 0].reshape(5, 5)
    assert corner[:2].abs().sum() == 0 and corner[:, :2].abs().sum() == 0
    # across the edge the colour term makes neighbours count (almost) nothing
    left = w[:, 4, 3].reshape(5, 5)  # column 3: offsets +1, +2 cross into the bright half
    assert left[:, 3:].sum() < 1e-6 and left[2, 2] == left.max()


def test_shared_direction_is_eq_13():
    x = torch.zeros(3, 6, 6, dtype=torch.float64)  # one colour: the spatial term alone
    w = sharing_weights(x, k_s=1)
    const = torch.full((3, 6, 6), 2.0, dtype=torch.float64)
    assert torch.allclose(shared_direction(const, w, k_s=1), const)  # weights sum to 1
    spike = torch.zeros(3, 6, 6, dtype=torch.float64)
    spike[:, 3, 3] = 1.0
    g = shared_direction(spike, w, k_s=1)
    # pixel (3, 2) receives its right neighbour's gradient with that neighbour's weight
    assert float(g[0, 3, 2]) == pytest.approx(float(w[:, 3, 2].reshape(3, 3)[1, 2]))
    assert float(g[0, 0, 0]) == 0.0  # too far from the spike


def test_step_is_eq_15_with_a_floor_and_the_direction_is_clipped():
    x = torch.tensor([[[1.0, 1.0, 1.0]]]).expand(3, 1, 3)
    n = torch.tensor([[[0.5, 1.0, 3.0]]]).expand(3, 1, 3)
    floor = grey_level([0.5, 0.5, 0.5])  # one grey level under a std of 0.5: 2/255
    assert floor.shape == (3, 1, 1) and float(floor[0]) == pytest.approx(2.0 / 255.0)
    s = step_sizes(x, n, gamma0=1.0, floor=floor)
    assert s[0, 0, 0] == pytest.approx(2.0) and s[0, 0, 2] == pytest.approx(0.5)
    assert s[0, 0, 1] == pytest.approx(255.0 / 2.0)  # a = 0: the floor, not infinity
    d = clipped(torch.tensor([-1.0, 0.01, 0.5]))
    assert d.tolist() == pytest.approx([-0.03, 0.01, 0.03])


def test_pixel_prior_fit_finds_the_colour_clusters_and_refuses_bad_counts():
    g = torch.Generator().manual_seed(1)
    imgs = torch.zeros(4, 3, 8, 8)
    imgs[:, :, :, :4] = 0.2 + 0.01 * torch.randn(4, 3, 8, 4, generator=g)
    imgs[:, :, :, 4:] = 0.8 + 0.01 * torch.randn(4, 3, 8, 4, generator=g)
    pixels = sample_pixels(imgs, 200, seed=0)
    assert pixels.shape == (200, 3)
    prior = fit_pixel_prior(pixels, components=2, seed=0)
    centres = sorted(float(m.mean()) for m in prior.means)
    assert centres == pytest.approx([0.2, 0.8], abs=0.02)
    assert np.allclose(sample_pixels(imgs, 200, seed=0), pixels)  # the same seed, same draw
    with pytest.raises(ConfigError, match="component"):
        fit_pixel_prior(pixels[:1], components=2)
    with pytest.raises(ConfigError, match=">= 1"):
        fit_pixel_prior(pixels, components=0)


def test_shared_direction_matches_eq_13_summed_pixel_by_pixel():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    grad = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    w = sharing_weights(x, k_s=1)
    want = torch.zeros_like(grad)
    for i in range(5):
        for j in range(6):
            for k in range(9):
                di, dj = k // 3 - 1, k % 3 - 1
                if 0 <= i + di < 5 and 0 <= j + dj < 6:
                    want[:, i, j] += w[k, i, j] * grad[:, i + di, j + dj]
    assert torch.allclose(shared_direction(grad, w, k_s=1), want)
