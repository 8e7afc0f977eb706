"""F2PAD's optimiser, feature losses, Algorithm 1, the cut-paste protocol and the
segmentation metrics (the objective's terms: tests/test_f2pad_terms.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from adan_pytorch import Adan

from fedad.config.schema import RunConfig
from fedad.data.cutpaste import MIN_CONTRAST, Shape, blob_shapes, paste
from fedad.detectors.base import FeatureShape
from fedad.detectors.registry import create, feature_config
from fedad.evaluation.differentiable import Refiner
from fedad.evaluation.scores import score
from fedad.evaluation.segmentation import calibrated_threshold, f1_threshold, iou_dice
from fedad.federation.site_data import extractor_for
from fedad.refinements.f2pad.algorithm import (
    DIVERGED,
    EMPTY,
    REFINED,
    Units,
    crop_box,
    dilate,
    refine_image,
)
from fedad.refinements.f2pad.config import F2PADConfig
from fedad.refinements.f2pad.feature_loss import padim_loss, patchcore_loss
from fedad.refinements.f2pad.refinement import F2PAD, fit_prior
from fedad.refinements.f2pad.solver import solve
from fedad.refinements.f2pad.step import grey_level


def test_adan_takes_a_per_element_rate_equal_to_the_scalar_one():
    torch.manual_seed(0)
    start = torch.randn(4, 5)
    a, b = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    oa, ob = Adan([a], lr=1e-2), Adan([b], lr=1e-2)
    ob.param_groups[0]["lr"] = torch.full((4, 5), 1e-2)
    for _ in range(5):
        for p, o in ((a, oa), (b, ob)):
            p.grad = (p.detach() ** 3 - 1.0)
            o.step()
    assert not torch.equal(a, start)  # it moved
    assert torch.allclose(a, b)
    c = start.clone().requires_grad_(True)
    oc = Adan([c], lr=1e-2)
    rate = torch.full((4, 5), 1e-2)
    rate[0] = 0.0  # a zero rate freezes those elements
    oc.param_groups[0]["lr"] = rate
    for _ in range(5):
        c.grad = c.detach() ** 3 - 1.0
        oc.step()
    assert torch.equal(c[0], start[0]) and not torch.equal(c[1], start[1])


def _units() -> Units:
    return Units.of([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def test_solver_moves_only_the_region_and_keeps_pixels_in_range():
    x = torch.zeros(3, 24, 24)
    region = torch.zeros(24, 24, dtype=torch.bool)
    region[8:16, 6:18] = True
    target = torch.full((3, 24, 24), 50.0)  # far above the valid range

    def objective(n):
        return (n - target).pow(2).sum()

    u = _units()
    low, high = (0 - u.paper_mean) / u.paper_std, (1 - u.paper_mean) / u.paper_std
    cfg = replace(F2PADConfig(), max_iterations=60, min_iterations=60)
    sol = solve(x, x.clone(), region, objective, cfg, 0.05, grey_level([0.229] * 3), low, high)
    assert sol.iterations == 60 and len(sol.history) == 60
    assert torch.equal(sol.n[:, ~region], x[:, ~region])  # nothing outside moved
    inside = sol.n[:, region]
    assert (inside > 0.1).all()  # it went towards the target...
    assert (inside <= high.view(3, 1) + 1e-6).all() and (inside >= low.view(3, 1) - 1e-6).all()
    assert sol.history[-1] < sol.history[0]


def test_patchcore_loss_is_eq5_and_padim_loss_eq7_on_a_crop():
    torch.manual_seed(0)
    bank = torch.randn(40, 6)
    f0 = torch.randn(1, 6, 3, 4)
    where = torch.ones(3, 4, dtype=torch.bool)
    where[0, 0] = False
    f = torch.randn(1, 6, 3, 4)
    loss = patchcore_loss(bank, f0, where, candidates=40)(f)  # every row a candidate: Eq. 4
    rows = f[0].permute(1, 2, 0)[where]
    want = torch.cdist(rows, bank).pow(2).amin(1).sum()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    few = patchcore_loss(bank, f0, where, candidates=3)(f)  # fewer candidates: never lower
    assert float(few) >= float(loss) - 1e-4
    # PaDiM on a 2x2 crop at cell (1, 2) of a 3x4 grid == the whole grid's loss there
    mean = torch.randn(12, 4)
    a = torch.randn(12, 4, 4)
    inv = a @ a.transpose(1, 2) + torch.eye(4)
    idx = np.array([0, 2, 3, 5])
    full_where = torch.zeros(3, 4, dtype=torch.bool)
    full_where[1:3, 2:4] = True
    whole = padim_loss(mean, inv, idx, full_where)(f)
    crop = padim_loss(mean, inv, idx, torch.ones(2, 2, dtype=torch.bool), origin=(1, 2),
                      grid=(3, 4))(f[:, :, 1:3, 2:4])
    manual = 0.0
    for i in (1, 2):
        for j in (2, 3):
            d = f[0, idx, i, j] - mean[i * 4 + j]
            manual += float(d @ inv[i * 4 + j] @ d)
    assert float(whole) == pytest.approx(manual, rel=1e-4)
    assert float(crop) == pytest.approx(manual, rel=1e-4)


def test_crop_box_is_aligned_and_covers_the_region():
    region = torch.zeros(128, 128, dtype=torch.bool)
    region[40:50, 70:90] = True
    ys, xs = crop_box(region, margin=8)
    assert ys.start % 32 == 0 and xs.start % 32 == 0
    assert (ys.stop - ys.start) % 32 == 0 and (xs.stop - xs.start) % 32 == 0
    assert ys.start <= 32 and ys.stop >= 58 and xs.start <= 62 and xs.stop >= 98


@pytest.fixture(scope="module")
def pasted_square():
    """A PatchCore bank of a smooth grey texture, and one of its images with a bright
    square pasted: 64 px, the real Lite0 backbone."""
    cfg = RunConfig(detector="patchcore")
    cfg.dataset.image_size = 64
    cfg = feature_config(cfg)
    extractor, info = extractor_for(cfg)
    g = torch.Generator().manual_seed(0)
    raw = 0.45 + 0.05 * torch.nn.functional.avg_pool2d(
        torch.rand(9, 1, 72, 72, generator=g), 9, stride=1)[:, :, :64, :64].expand(9, 3, 64, 64)
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    images = (raw - mean) / std
    train, x = images[:8], images[8].clone()
    gt = torch.zeros(64, 64, dtype=torch.bool)
    gt[24:34, 28:40] = True
    x[:, gt] = ((0.95 - mean) / std).view(3, 1)
    with torch.no_grad():
        feats = extractor(train)
    det = create(cfg, FeatureShape(*feats.shape[1:]), "cpu", seed=0)
    det.fit(feats, None, 1)
    summary = det.merge([det.validate(det.summarize(1), "site")], 1)
    with torch.no_grad():
        base = score(det, extractor(x[None]), summary, 64).maps[0]
    units = Units.of(info["mean"], info["std"])
    f2 = replace(cfg.f2pad, max_iterations=40, dilation=5)
    prior = fit_prior(train, f2, units)
    return dict(cfg=cfg, f2=f2, extractor=extractor, det=det, summary=summary, x=x, gt=gt,
                base=base, units=units, prior=prior)


def test_refined_mask_beats_the_base_mask_on_a_pasted_square(pasted_square):
    s = pasted_square
    m0 = s["base"] >= f1_threshold(s["base"][None], s["gt"][None])
    before = iou_dice(m0[None], s["gt"][None])["iou"]
    ref = F2PAD(s["f2"], s["det"], s["summary"], s["extractor"], s["units"], s["prior"])
    assert isinstance(ref, Refiner)  # the hook of fedad.evaluation.differentiable
    r = ref.refine_one(s["x"], m0)
    after = iou_dice(r.mask[None], s["gt"][None])["iou"]
    assert r.status == REFINED and r.iterations > 0
    assert after > before, (before, after)
    region = m0.clone()
    from fedad.refinements.f2pad.algorithm import dilate

    region = dilate(m0, s["f2"].dilation)
    assert torch.allclose(r.normal[:, ~region], s["x"][:, ~region], atol=1e-5)  # outside: x
    assert not r.mask[~region].any() and (r.amap[~region] == 0).all()
    short = replace(s["f2"], max_iterations=8, min_iterations=8)
    twice = [F2PAD(short, s["det"], s["summary"], s["extractor"], s["units"], s["prior"]
                   ).refine_one(s["x"], m0) for _ in range(2)]
    assert torch.equal(twice[0].mask, twice[1].mask)  # deterministic
    assert torch.equal(twice[0].amap, twice[1].amap)


def test_empty_base_mask_is_returned_unchanged_and_divergence_keeps_the_base_mask(
        pasted_square):
    s = pasted_square
    empty = torch.zeros(64, 64, dtype=torch.bool)
    r = refine_image(s["x"], empty, s["extractor"], s["det"], s["summary"], s["prior"],
                     s["f2"], s["units"], 0.05)
    assert r.status == EMPTY and not r.mask.any() and torch.equal(r.normal, s["x"])
    bad = {k: v.copy() for k, v in s["summary"].items()}
    bad["bank"][:] = np.inf  # every distance infinite: a non-finite loss
    m0 = torch.zeros(64, 64, dtype=torch.bool)
    m0[20:36, 24:44] = True
    refiner = F2PAD(s["f2"], s["det"], bad, s["extractor"], s["units"], s["prior"])
    out = refiner.refine(s["x"][None], m0[None].float(), 0.5, names=["bad.png"])
    assert out.status == [DIVERGED] and out.count(DIVERGED) == 1
    assert torch.equal(out.masks[0], m0)


def test_iou_dice_and_thresholds_by_hand():
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[0, :2, :2] = True  # 4 pixels; image 1 has no defect
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, :2, :1] = True  # 2 of them
    pred[1, 3, 3] = True  # a false alarm on the normal image
    m = iou_dice(pred, gt)
    assert m["iou"] == pytest.approx(50.0) and m["dice"] == pytest.approx(100 * 4 / 6)
    assert m["iou_pooled"] == pytest.approx(100 * 2 / 5)
    assert m["dice_pooled"] == pytest.approx(100 * 4 / 7)
    maps = torch.tensor([[0.1, 0.9, 0.8, 0.2]])
    masks = torch.tensor([[0, 1, 1, 0]])
    assert f1_threshold(maps, masks) == pytest.approx(0.8)
    normals = torch.stack([torch.full((2, 2), float(v)) for v in range(11)])
    assert calibrated_threshold(normals, 0.9) == pytest.approx(9.0)


def test_cut_paste_is_exact_and_seeded():
    img = np.full((40, 50, 3), 120, dtype=np.uint8)
    img[:, 25:] = 10
    shapes = blob_shapes(3, seed=0)
    a, ma = paste(img, shapes, np.random.default_rng(5))
    b, mb = paste(img, shapes, np.random.default_rng(5))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)  # the same draw
    assert ma.any() and np.array_equal(a[~ma], img[~ma])  # only the mask changed
    diff = np.abs(a[ma].astype(int) - img[ma].astype(int))
    assert (diff >= MIN_CONTRAST - 1).all()  # every pasted pixel differs
    square = Shape(np.ones((4, 4), bool), 0.5, 0.5)
    _, mask = paste(img, [square], np.random.default_rng(0), scale=(1.0, 1.0))
    assert mask.sum() == 20 * 25  # half the height and width of the 40x50 image


def test_pixel_metrics_read_the_refined_map_inside_the_region_and_the_base_outside():
    from fedad.evaluation.metrics import pixel_auroc
    from fedad.refinements.f2pad.site import joined_maps

    base = torch.zeros(1, 12, 12)
    base[0, 2:4, 2:4] = 5.0  # the base mask at threshold 1: a 2x2 square
    base[0, 9, 9] = 0.5  # a defect the base detector scores below its threshold
    refined = torch.zeros(1, 12, 12)
    refined[0, 3, 3] = 40.0  # ||a|| where the refinement found the anomaly
    joined = joined_maps(base, refined, 1.0, dilation=1)
    region = dilate(base[0] >= 1.0, 1)
    assert torch.equal(joined[0][~region], base[0][~region])  # outside: the base map
    assert torch.equal(joined[0][region], 1.0 + refined[0][region])  # inside: offset ||a||
    assert float(joined[0][region].min()) > float(joined[0][~region].max())
    gt = torch.zeros(1, 12, 12, dtype=torch.bool)
    gt[0, 3, 3] = gt[0, 9, 9] = True
    # the miss at (9, 9) keeps its base score above the normal zeros; with the refined map
    # alone (0 outside the region) it would tie with every normal pixel
    assert pixel_auroc(joined, gt) > pixel_auroc(refined, gt)


def test_refine_f2pad_at_evaluation_and_in_predict(tmp_path):
    """``refine=f2pad`` on the engine: the site refines its test maps (metrics reported,
    its prior and threshold left in its folder, nothing else travels) and
    ``fedad-predict`` writes a refined mask and estimated normal image per image. With
    ``f2pad.init=nearest`` (the inpainting paths have their own tests): the site's nearest
    normal images are found at evaluation and again, from their files, in predict."""
    from PIL import Image

    from fedad.cli.predict import main as predict_main
    from fedad.federation.centralized import run_centralized
    from tests.test_predict import site_folder

    cfg = RunConfig(detector="patchcore", refine="f2pad")
    cfg.dataset.name, cfg.dataset.root = "mvtec", str(site_folder(tmp_path / "site"))
    cfg.dataset.image_size = 64
    cfg.calibration.holdout, cfg.calibration.quantile = 0.35, 0.5
    cfg.f2pad = replace(cfg.f2pad, max_iterations=12, min_iterations=2, images=2,
                        init="nearest", nearest_images=5)
    run = tmp_path / "run-1"
    out = run_centralized(cfg, run)
    assert out["f2pad_refined"] + out["f2pad_empty"] == 2  # the seeded subset
    assert out["f2pad_diverged"] == 0
    assert 0.0 <= out["f2pad_p_auroc"] <= 1.0 and 0.0 <= out["f2pad_iou"] <= 100.0
    assert (run / "site-0" / "f2pad.npz").is_file()
    with np.load(run / "site-0" / "f2pad-nearest.npz") as z:
        assert z["keys"].shape[0] == 5 and all(Path(p).is_file() for p in z["paths"])
    new = tmp_path / "new"
    new.mkdir()
    for i, p in enumerate(sorted((tmp_path / "site").rglob("test/*/*.png"))[:2]):
        Image.open(p).save(new / f"{i}.png")
    assert predict_main([str(run), str(new), "--out", str(tmp_path / "pred"),
                         "--no-heatmaps", "-q"]) == 0
    masks = sorted((tmp_path / "pred" / "refined").glob("*-mask.png"))
    normals = sorted((tmp_path / "pred" / "refined").glob("*-normal.png"))
    assert len(masks) == len(normals) == 2
    assert np.asarray(Image.open(masks[0])).shape == (64, 64)
    assert np.asarray(Image.open(normals[0])).shape == (64, 64, 3)


def test_nearest_normal_copies_the_masked_pixels_of_the_nearest_training_image(tmp_path):
    from fedad.data.factory import build_dataset
    from fedad.refinements.f2pad.init import initial_normal
    from fedad.refinements.f2pad.nearest_init import (
        from_dataset,
        load_candidates,
        save_candidates,
    )
    from tests.test_predict import site_folder

    cfg = RunConfig()
    cfg.dataset.name, cfg.dataset.root = "mvtec", str(site_folder(tmp_path / "site"))
    cfg.dataset.image_size = 64
    extractor, info = extractor_for(cfg)
    train = build_dataset(cfg.dataset, "train")
    train.set_normalisation(info["mean"], info["std"])
    nearest = from_dataset(train, extractor, limit=0, seed=0)
    assert nearest.keys.shape == (len(train), 176)
    x = train[7].image.clone()
    x[:, 20:30, 20:30] += 3.0  # a defect on a training image: its own image is nearest
    got = nearest(x)
    assert nearest.last == 7 and torch.equal(got, train[7].image)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[18:32, 18:32] = True
    n0 = initial_normal(x, mask, "nearest", got)
    assert torch.equal(n0[:, mask], got[:, mask]) and torch.equal(n0[:, ~mask], x[:, ~mask])
    save_candidates(tmp_path / "site-0", nearest)  # what fedad-predict reads back
    again = load_candidates(tmp_path / "site-0", extractor, 64, info["mean"], info["std"])
    assert torch.allclose(again(x), got, atol=1e-6) and again.last == 7


def test_refine_needs_a_differentiable_detector_and_sane_f2pad_values():
    from fedad.errors import ConfigError
    from fedad.federation.compose import check

    with pytest.raises(ConfigError, match="components"):
        check(RunConfig(detector="patchcore", refine="f2pad",
                        f2pad=replace(F2PADConfig(), components=0)))
    with pytest.raises(ConfigError, match="beta0"):
        check(RunConfig(detector="padim", refine="f2pad",
                        f2pad=replace(F2PADConfig(), beta0=-1.0)))
    # the section of a refinement the run does not use is not its business
    check(RunConfig(detector="padim", f2pad=replace(F2PADConfig(), beta0=-1.0)))
    with pytest.raises(ConfigError, match="refine=f2pad requires Differentiable.*asymst"):
        check(RunConfig(detector="asymst", exchange="fedavg", refine="f2pad"))
    with pytest.raises(ConfigError, match="refine must be one of none, f2pad"):
        check(RunConfig(detector="padim", refine="f2pda"))
    check(RunConfig(detector="padim", refine="f2pad"))  # PaDiM scores with gradients
