"""Metrics against brute-force references written independently of fedad.evaluation.metrics."""

from __future__ import annotations

from bisect import bisect

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from fedad.evaluation.metrics import evaluate, f1_max, image_auroc, pixel_auroc, pro_score

# --------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (anomalous, normal) pairs ranked correctly, ties counting 0.5."""
    pos = scores[labels.astype(bool)][:, None].astype(np.float64)
    neg = scores[~labels.astype(bool)][None, :].astype(np.float64)
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    labels = labels.astype(bool)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def flood_fill_regions(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a 2-D bool mask by breadth-first search (no scipy)."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if not mask[i, j] or seen[i, j]:
                continue
            region = np.zeros_like(mask, dtype=bool)
            queue = [(i, j)]
            seen[i, j] = True
            while queue:
                y, x = queue.pop()
                region[y, x] = True
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
            regions.append(region)
    return regions


def integrate_up_to(fprs: list[float], pros: list[float], limit: float) -> float:
    """Trapezoid area of the polyline from x = 0 to x = limit, the last segment cut at limit."""
    area = 0.0
    for i in range(len(fprs) - 1):
        x0, y0, x1, y1 = fprs[i], pros[i], fprs[i + 1], pros[i + 1]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area


def brute_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """For every distinct threshold, FPR and mean region overlap straight from the definition."""
    masks = masks.astype(bool)
    regions = [(n, r) for n, m in enumerate(masks) for r in flood_fill_regions(m)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(np.sum(pred & normal) / np.sum(normal))
        pros.append(np.mean([np.sum(pred[n][r]) / np.sum(r) for n, r in regions]))
    return integrate_up_to(fprs, pros, limit) / limit


def reference_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Port of the MVTec AD evaluation code: ``compute_pro`` then ``trapezoid`` / limit.

    Kept as in the reference (argsort of all pixels, cumulative sums, ties merged by keeping
    the last point of each group), except that FPRs stay float64 instead of float32.
    """
    structure = np.ones((3, 3), dtype=int)
    fp_changes = np.zeros(maps.shape, dtype=np.uint32)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    num_ok, num_regions = 0, 0
    for i, gt in enumerate(masks):
        labelled, n = ndimage.label(gt, structure)
        num_regions += n
        ok = labelled == 0
        num_ok += ok.sum()
        fp_changes[i][ok] = 1
        for k in range(n):
            region = labelled == k + 1
            pro_changes[i][region] = 1.0 / region.sum()
    order = np.argsort(maps.ravel())[::-1]
    scores = maps.ravel()[order]
    fprs = np.cumsum(fp_changes.ravel()[order]) / num_ok
    pros = np.cumsum(pro_changes.ravel()[order]) / num_regions
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate(([0.0], np.clip(fprs[keep], None, 1), [1.0]))
    y = np.concatenate(([0.0], np.clip(pros[keep], None, 1), [1.0]))
    correction = 0.0
    if limit not in x:
        ins = bisect(x, limit)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (limit - x[ins - 1])
    cut = x <= limit
    x, y = x[cut], y[cut]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / limit


# --------------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------------


def small_masks() -> np.ndarray:
    """4 images of 12x12: one normal, blobs, two squares touching only at a corner, 1 pixel."""
    masks = np.zeros((4, 12, 12), dtype=np.uint8)
    masks[1, 2:5, 3:8] = 1
    masks[1, 8:11, 1:3] = 1
    masks[2, 1:4, 1:4] = 1  # touches the next square only diagonally: one 8-connected region
    masks[2, 4:6, 4:6] = 1
    masks[2, 9, 9] = 1
    masks[3, 5:9, 6:10] = 1
    masks[3, 0, 11] = 1
    return masks


def small_maps(seed: int, decimals: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.random((4, 12, 12)) + 0.6 * small_masks() * rng.random((4, 12, 12))
    if decimals is not None:  # many ties, also between normal and anomalous pixels
        maps = np.round(maps, decimals)
    return maps.astype(np.float32)


def random_masks(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0, 2, 2))
    masks = noise > 1.2 * noise.std()
    masks[: shape[0] // 3] = False  # some fully normal images
    return masks


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_pairwise_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # ties
    assert image_auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_auroc_matches_pairwise_reference_and_sklearn(decimals: int | None) -> None:
    maps, masks = small_maps(0, decimals), small_masks()
    expected = brute_auroc(maps.ravel(), masks.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_auroc_perfect_and_reversed_are_not_flipped() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert image_auroc(scores, labels) == 1.0
    assert image_auroc(-scores, labels) == 0.0
    masks = small_masks()
    maps = masks.astype(np.float32)
    assert pixel_auroc(maps, masks) == 1.0
    assert pixel_auroc(-maps, masks) == 0.0


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([0.1, 0.5, 0.9], [1, 1, 1])
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.random.rand(2, 4, 4), np.zeros((2, 4, 4)))


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        image_auroc([0.1, 0.5, 0.9], [0, 2, 1])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, np.nan, 0.9], [0, 1, 1])
    with pytest.raises(ValueError, match="differ"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


# --------------------------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", range(3))
def test_pro_matches_brute_force(seed: int, decimals: int | None) -> None:
    maps, masks = small_maps(seed, decimals), small_masks()
    expected = brute_pro(maps, masks)
    assert 0.0 < expected < 1.0
    assert pro_score(maps, masks) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_pro_matches_brute_force_at_other_limits(limit: float) -> None:
    maps, masks = small_maps(7, 2), small_masks()
    assert pro_score(maps, masks, fpr_limit=limit) == pytest.approx(
        brute_pro(maps, masks, limit), abs=1e-6
    )


@pytest.mark.parametrize("decimals", [None, 1])
def test_pro_matches_mvtec_reference_port(decimals: int | None) -> None:
    masks = random_masks(3, (24, 40, 40))
    rng = np.random.default_rng(4)
    maps = rng.random(masks.shape) + 0.4 * masks
    maps = (maps if decimals is None else np.round(maps, decimals)).astype(np.float32)
    assert pro_score(maps, masks) == pytest.approx(reference_pro(maps, masks), abs=1e-6)


def test_pro_limit_hit_exactly_by_a_curve_point() -> None:
    # 10 normal pixels with distinct scores: FPR steps of 0.1 hit 0.3 exactly.
    maps = np.zeros((1, 3, 4), dtype=np.float32)
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 2, 2:] = True
    maps[0].ravel()[:10] = np.arange(10) / 10
    maps[0, 2, 2:] = [0.85, 0.15]
    assert pro_score(maps, masks) == pytest.approx(brute_pro(maps, masks), abs=1e-12)
    assert pro_score(maps, masks) == pytest.approx(reference_pro(maps, masks), abs=1e-12)


def test_pro_diagonal_squares_are_one_region() -> None:
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:2, 0:2] = True  # A
    masks[0, 2:4, 2:4] = True  # B, touching A only at a corner
    masks[0, 7:9, 7:9] = True  # C
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 7:9, 7:9] = 1.0
    # Regions {A, B} (half found) and C (found): PRO = 0.75 at FPR 0, then a line to (1, 1).
    # Area up to 0.3 of 0.75 + 0.25 x is 0.225 + 0.01125. With three 4-connected regions the
    # start would be 2/3 instead.
    assert pro_score(maps, masks) == pytest.approx((0.225 + 0.01125) / 0.3, abs=1e-12)


def test_pro_perfect_and_constant_maps() -> None:
    masks = small_masks()
    assert pro_score(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)
    constant = np.full(masks.shape, 0.5, dtype=np.float32)
    # One threshold: the curve is the diagonal from (0, 0) to (1, 1), area 0.3^2 / 2.
    assert pro_score(constant, masks) == pytest.approx(0.15, abs=1e-12)
    assert pro_score(constant, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    # A map that ranks every anomalous pixel last.
    assert pro_score(-masks.astype(np.float32), masks) == pytest.approx(0.0, abs=1e-12)


def test_positive_affine_map_leaves_pro_and_auroc_unchanged() -> None:
    rng = np.random.default_rng(5)
    masks = small_masks()
    # Dyadic grid, so that 2.5 x + 7 is exact in float32 and keeps ties and order.
    maps = (rng.integers(0, 64, masks.shape) + 24 * masks).astype(np.float32) / 64
    moved = 2.5 * maps + 7.0
    assert pro_score(moved, masks) == pytest.approx(pro_score(maps, masks), abs=1e-12)
    assert pixel_auroc(moved, masks) == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    assert image_auroc(2.5 * scores + 7.0, labels) == image_auroc(scores, labels)


def test_pro_binned_thresholds() -> None:
    masks = small_masks()
    rng = np.random.default_rng(6)
    grid = (rng.integers(0, 8, masks.shape) + 2 * masks).astype(np.float32)  # values 0..9
    # Thresholds 0, 1, ..., 9 are exactly the distinct scores: same as the exact curve.
    assert pro_score(grid, masks, num_thresholds=10) == pytest.approx(
        pro_score(grid, masks), abs=1e-12
    )
    maps = small_maps(1, None)
    exact = pro_score(maps, masks)
    assert pro_score(maps, masks, num_thresholds=20000) == pytest.approx(exact, abs=2e-3)
    assert pro_score(maps, masks, num_thresholds=3) != pytest.approx(exact, abs=1e-3)


def test_pro_errors() -> None:
    with pytest.raises(ValueError, match="no anomalous region"):
        pro_score(np.random.rand(2, 5, 5), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="no normal pixel"):
        pro_score(np.random.rand(2, 5, 5), np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(small_maps(0, None), small_masks(), fpr_limit=0.0)


# --------------------------------------------------------------------------------------------
# F1-max
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", range(3))
def test_f1_max_matches_brute_force_and_sklearn(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.3
    labels[0] = True
    scores = rng.random(60) + 0.4 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    expected = brute_f1_max(scores, labels)
    assert f1_max(scores, labels) == pytest.approx(expected, abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = np.where(precision + recall > 0, precision + recall, 1.0)
    assert f1_max(scores, labels) == pytest.approx(np.max(2 * precision * recall / denom))


def test_f1_max_pixel_level_and_extremes() -> None:
    maps, masks = small_maps(2, 1), small_masks()
    assert f1_max(maps.ravel(), masks.ravel()) == pytest.approx(
        brute_f1_max(maps.ravel(), masks.ravel()), abs=1e-12
    )
    assert f1_max([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    # Reversed: best is to flag everything, F1 = 2 * 1 / (2 * 1 + 2).
    assert f1_max([0.9, 0.8, 0.1], [0, 0, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        f1_max([0.1, 0.2], [0, 0])


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_keys_and_values() -> None:
    maps, masks = small_maps(0, 2), small_masks()
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2)).astype(int)
    image_only = evaluate(scores, labels)
    assert set(image_only) == {"i_auroc", "i_f1_max"}
    assert evaluate(scores, labels, maps=maps) == image_only  # maps without masks
    full = evaluate(scores, labels, maps, masks)
    assert set(full) == {"i_auroc", "i_f1_max", "p_auroc", "pro", "p_f1_max"}
    assert full["i_auroc"] == image_auroc(scores, labels)
    assert full["i_f1_max"] == f1_max(scores, labels)
    assert full["p_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
    assert full["pro"] == pytest.approx(brute_pro(maps, masks), abs=1e-6)
    assert full["p_f1_max"] == pytest.approx(f1_max(maps.ravel(), masks.ravel()), abs=1e-12)
    as_tensors = evaluate(
        torch.from_numpy(scores),
        torch.from_numpy(labels),
        torch.from_numpy(maps),
        torch.from_numpy(masks.astype(bool)),
    )
    assert as_tensors == pytest.approx(full, abs=1e-12)


def test_evaluate_without_anomalous_pixels_or_with_bad_inputs() -> None:
    maps = small_maps(0, None)
    scores, labels = maps.max(axis=(1, 2)), np.array([0, 1, 1, 0])
    empty = evaluate(scores, labels, maps, np.zeros(maps.shape, dtype=bool))
    assert set(empty) == {"i_auroc", "i_f1_max"}
    with pytest.raises(ValueError, match="without anomaly maps"):
        evaluate(scores, labels, masks=small_masks())
    with pytest.raises(ValueError, match="3 anomaly maps but 4"):
        evaluate(scores, labels, maps[:3], small_masks()[:3])
