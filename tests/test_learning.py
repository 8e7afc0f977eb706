"""Every trained detector learns: on tiny images, its training (a few hundred optimiser
steps at most) brings each image with a planted defect above every normal test image
(house rule 3). The check (:func:`ranks_planted_above_normals`) fails on a detector whose
score is constant, so a broken score path cannot pass it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedad.config.flat import from_flat
from fedad.detectors.base import Detector, FeatureShape, Scores
from fedad.detectors.capabilities import Budgeted
from fedad.detectors.registry import create, feature_config, resolve
from fedad.features.extractor import build_feature_extractor
from fedad.features.levels import Levels

SIZE = 64


def stripes(n: int, seed: int) -> torch.Tensor:
    """Grey diagonal stripes of random phase with a little noise, ``(n, 3, S, S)`` in
    ``[-1, 1]``: a regular texture, as an inspected surface."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(),
                            indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 2 * torch.pi
    x = 0.4 * torch.sin(2 * torch.pi * (xx + yy)[None] / 8 + phase)
    x = x + 0.03 * torch.randn(n, SIZE, SIZE, generator=g)
    return x[:, None].expand(n, 3, SIZE, SIZE).clamp(-1, 1).contiguous()


def planted(images: torch.Tensor, seed: int) -> torch.Tensor:
    """``images`` each with one flat bright 12 x 12 square at a random place."""
    g = torch.Generator().manual_seed(seed)
    out = images.clone()
    for i in range(len(out)):
        y, x = torch.randint(4, SIZE - 16, (2,), generator=g).tolist()
        out[i, :, y:y + 12, x:x + 12] = 0.9
    return out


def ranks_planted_above_normals(normal: Scores, defective: Scores) -> None:
    """Each defective image's score above every normal image's.

    Raises:
        AssertionError: naming the margin (lowest defective minus highest normal score).
    """
    a, b = normal.image.float(), defective.image.float()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    margin = float(b.min() - a.max())
    assert margin > 0, (f"a planted defect scores at or below a normal image (margin "
                        f"{margin:.4g}; normal {a.tolist()}, defective {b.tolist()})")


class Constant(Detector):
    """Scores every image the same: what a broken score path looks like."""

    name = "constant"

    def fit(self, *args, **kwargs):  # pragma: no cover - never trained
        raise NotImplementedError

    def state(self):  # pragma: no cover
        return {}

    def load_state(self, arrays):  # pragma: no cover
        pass

    def score(self, features, global_summary, image_size):
        n = len(features)
        return Scores(maps=torch.zeros(n, image_size, image_size), image=torch.ones(n))


def test_the_check_fails_on_a_detector_whose_score_is_constant():
    det = Constant.__new__(Constant)
    x = stripes(4, 0)
    with pytest.raises(AssertionError, match="margin 0"):
        ranks_planted_above_normals(det.score(x, {}, SIZE), det.score(planted(x, 1), {}, SIZE))


def trained(cfg, train_units: torch.Tensor, to_inputs) -> tuple[Detector, dict]:
    """The detector of ``cfg`` trained on ``train_units`` through every round of its
    budget (or ``train.rounds``), as one site; its scoring summary."""
    cfg = resolve(cfg)
    inputs = to_inputs(train_units)
    det = create(cfg, FeatureShape(*inputs.shape[1:]), "cpu", seed=0)
    first = 0 if not isinstance(det, Budgeted) else 1
    for r in range(first, cfg.train.rounds + 1):
        info = det.fit(inputs, None, r)
        assert np.isfinite(info.loss)
    return det, det.own_summary(inputs)


def check_learns(cfg, to_inputs) -> None:
    det, summary = trained(cfg, stripes(24, 0), to_inputs)
    normals = stripes(6, 100)
    defective = planted(stripes(4, 200), 7)
    ranks_planted_above_normals(det.score(to_inputs(normals), summary, SIZE),
                                det.score(to_inputs(defective), summary, SIZE))


def pixels(cfg):
    levels = Levels(cfg.backbone, [4])
    return lambda units: levels.from_unit(units)


def test_asymst_learns_to_rank_a_planted_defect():
    """The DDPM (200 steps), the student (100) and the head (400, DeSTSeg's 1:4), on DDPM
    defects from crops of the normals (the default synthesis). With 60 DDPM and 240 head
    steps the head's margin was -0.03: it has to learn what a defect is from the DDPM's
    samples, and a DDPM of 60 steps draws too little of one."""
    cfg = from_flat({
        "detector": "asymst", "exchange": "fedavg", "dataset.image_size": SIZE,
        "train.local_steps": 100, "train.batch_size": 8, "ddpm.channels": [8, 16],
        "ddpm.groups": 4, "ddpm.crop": 32, "ddpm.steps": 200, "ddpm.batch_size": 8,
        "asymst.student_steps": 100, "asymst.head_steps": 400, "asymst.pool": 16,
        "asymst.sample_steps": 4, "asymst.student_width": 8, "asymst.head_channels": 16,
        "asymst.top_k": 20})
    check_learns(cfg, pixels(cfg))


def test_diffad_learns_to_rank_a_planted_defect():
    """100 AdamW steps of a two-level UNet on whole 64-px images (the cpu budget's
    schedule, EMA and feature loss)."""
    cfg = from_flat({
        "detector": "diffad", "exchange": "fedavg", "dataset.image_size": SIZE,
        "train.local_steps": 50, "train.batch_size": 8, "ddpm.channels": [8, 16],
        "ddpm.groups": 4, "ddpm.steps": 100, "ddpm.batch_size": 8, "ddpm.ema": 0.9,
        "diffad.size": 0, "diffad.head_stride": 2, "diffad.norm_images": 8,
        "diffad.top_k": 20})
    check_learns(cfg, pixels(cfg))


def test_feddymem_with_a_trained_head_learns_to_rank_a_planted_defect():
    """FedDyMem's head trained by the metric loss against its own bank (a weight
    exchange's site), 3 rounds of 3 epochs, on Lite0 features of the images."""
    cfg = from_flat({"detector": "feddymem", "exchange": "fedavg",
                     "dataset.image_size": SIZE, "train.rounds": 3,
                     "train.local_epochs": 3, "train.batch_size": 8})
    extractor, _ = build_feature_extractor(feature_config(cfg).backbone)
    levels = Levels(cfg.backbone, [4])

    def features(units: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return extractor(levels.from_unit(units))

    check_learns(cfg, features)
