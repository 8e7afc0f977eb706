"""The differentiable scoring path: equal to the fast (faiss, no-gradient) path, gradients
to the features and through the frozen backbone to the pixels, and a refinement that wraps
PatchCore's differentiable score and changes its maps."""

from __future__ import annotations

import pytest
import torch

from fedad.detectors.base import FeatureShape
from fedad.detectors.capabilities import Differentiable
from fedad.detectors.registry import create, feature_config
from fedad.errors import ConfigError
from fedad.evaluation.differentiable import (
    RefinedSet,
    Refiner,
    differentiable,
    score_images,
)
from fedad.features.extractor import build_feature_extractor
from tests.test_detectors import features, tiny_cfg

SHAPE = FeatureShape(12, 4, 4)


def fitted(name: str, shape: FeatureShape = SHAPE, train: torch.Tensor | None = None,
           **section):
    cfg = tiny_cfg(name)
    for k, v in section.items():
        setattr(getattr(cfg, name), k, v)
    det = create(cfg, shape)
    r = det.first_round  # FedDyMem: round 0 builds the first reduced bank (Alg. 4)
    det.fit(features(10, 0, shape) if train is None else train, None, r)
    server = create(cfg, shape)
    return det, server.merge([server.validate(det.summarize(r), "c")], r)


@pytest.mark.parametrize(("name", "section"), [("patchcore", {}),
                                               ("patchcore", {"reweight": True,
                                                              "reweight_k": 4}),
                                               ("padim", {}), ("feddymem", {})])
def test_differentiable_path_equals_the_fast_path_and_has_gradients(name, section):
    det, glob = fitted(name, **section)
    assert isinstance(det, Differentiable)
    x = features(3, 7, SHAPE)
    x[1, :, 2, 1] += 5.0
    fast = det.score(x, glob, 16)
    xg = x.clone().requires_grad_(True)
    slow = det.score_features(xg, glob, 16)
    assert torch.allclose(slow.image.detach(), fast.image, rtol=1e-4, atol=1e-4)
    assert torch.allclose(slow.maps.detach(), fast.maps, rtol=1e-4, atol=1e-4)
    slow.image.sum().backward()
    grad = xg.grad
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    if name == "patchcore":  # the image score is the worst patch's: its gradient sits there
        g1 = grad[1].abs().sum(dim=0)
        assert int(g1.argmax()) == 2 * SHAPE.width + 1
        assert float(g1.flatten().sort().values[-2]) == 0.0  # and nowhere else


def test_a_detector_without_a_differentiable_score_is_named():
    import tests.toy_trainable  # noqa: F401  (registers the toy autoencoder)

    cfg = tiny_cfg("toyae")
    cfg.exchange = "fedavg"  # a trained network: weights travel, no summary
    with pytest.raises(ConfigError,
                       match="requires Differentiable .*detector=toyae does not declare"):
        differentiable(create(cfg, SHAPE))


class OneStep:
    """A toy refinement: one normalised gradient step on the image down the detector's
    image score; the map becomes the step's per-pixel size (a full-resolution map), the
    mask where it exceeds the threshold."""

    def __init__(self, extractor, detector, summary) -> None:
        self.extractor, self.detector, self.summary = extractor, detector, summary

    def refine(self, images, base_maps, threshold, names=None) -> RefinedSet:
        x = images.clone().requires_grad_(True)
        score_images(self.extractor, self.detector, x, self.summary).image.sum().backward()
        step = x.grad / x.grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        maps = step.abs().sum(dim=1)
        return RefinedSet(masks=maps >= threshold, maps=maps,
                          normals=(images - 0.5 * step).detach())


def test_score_images_through_the_backbone_and_a_refinement_changes_the_maps():
    cfg = feature_config(tiny_cfg("patchcore"))
    extractor, _ = build_feature_extractor(cfg.backbone)
    g = torch.Generator().manual_seed(0)
    train = torch.randn(4, 3, 64, 64, generator=g) * 0.3
    with torch.no_grad():
        shape = FeatureShape(*extractor(train).shape[1:])
        det, glob = fitted("patchcore", shape, extractor(train))
    images = train[:2].clone()
    images[1, :, 20:30, 30:40] += 3.0  # a bright square: a defect
    with torch.no_grad():
        fast = det.score(extractor(images), glob, 64)
    slow = score_images(extractor, det, images, glob)
    assert torch.allclose(slow.image, fast.image, rtol=1e-4, atol=1e-4)
    assert float(slow.image[1]) > float(slow.image[0])

    refinement = OneStep(extractor, det, glob)
    assert isinstance(refinement, Refiner)
    refined = refinement.refine(images, fast.maps, 1e-3)
    assert refined.maps.shape == (2, 64, 64) and not torch.allclose(refined.maps, fast.maps)
    assert refined.masks.dtype == torch.bool and refined.masks.any()
    with torch.no_grad():  # the step lowered the defect's score, the one it followed
        after = det.score(extractor(refined.normals), glob, 64).image
    assert float(after[1]) < 0.95 * float(fast.image[1])
