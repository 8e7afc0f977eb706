"""Backbones (offline Lite0, local weights files), Eq. 8 fusion and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data as skdata

from fedad.config.schema import BackboneConfig, DataConfig
from fedad.data.factory import build_dataset
from fedad.errors import ConfigError
from fedad.features.backbones import create_backbone, normalisation, pair_state_dict_by_order
from fedad.features.cache import clear_memory_cache, extract_features
from fedad.features.extractor import FeatureExtractor, build_feature_extractor, extractor_signature

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("tf_efficientnet_lite0", "offline")


def test_offline_lite0_carries_imagenet_weights(lite0):
    mean, std = normalisation(lite0)
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float() / 255  # a cat photo
    img = F.interpolate(img[None], size=(224, 224), mode="bilinear", align_corners=False)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = lite0(x).topk(5).indices[0].tolist()
    assert top5[0] in CAT_CLASSES
    random = create_backbone("tf_efficientnet_lite0", "none")
    assert not torch.equal(random.conv_stem.weight, lite0.conv_stem.weight)


def test_pairing_by_order_checks_every_shape():
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(pair_state_dict_by_order(src, {"x": torch.ones(2, 3), "y": torch.ones(4)},
                                         "w")) == ["x", "y"]
    with pytest.raises(ConfigError, match=r"tensor b \(4,\) does not fit y \(5,\)"):
        pair_state_dict_by_order(src, {"x": torch.ones(2, 3), "y": torch.ones(5)}, "w")
    with pytest.raises(ConfigError, match="2 tensors in the weights file, 1 in the model"):
        pair_state_dict_by_order(src, {"x": torch.ones(2, 3)}, "w")


@pytest.mark.parametrize(("name", "size"), [("tf_efficientnet_lite1", 240),
                                           ("tf_efficientnet_lite2", 260)])
def test_offline_lite1_and_lite2_carry_imagenet_weights(name: str, size: int):
    model = create_backbone(name, "offline")
    mean, std = normalisation(model)
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert model(x).argmax(1).item() in CAT_CLASSES


def test_offline_weights_only_for_the_lites():
    with pytest.raises(ConfigError, match="offline exists for tf_efficientnet_lite0, "
                                          "tf_efficientnet_lite1, tf_efficientnet_lite2 only"):
        create_backbone("resnet18", "offline")
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone("no_such_net", "none")


def test_local_weights_file_for_wide_resnet50_2(tmp_path):
    # Stands in for timm's download of wide_resnet50_2: the same loader, a local file.
    torch.manual_seed(0)
    ref = timm.create_model("wide_resnet50_2", pretrained=False)
    path = tmp_path / "wrn50.pth"
    torch.save(ref.state_dict(), path)
    model = create_backbone("wide_resnet50_2", str(path))
    assert torch.equal(model.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    extractor, info = build_feature_extractor(
        BackboneConfig(name="wide_resnet50_2", weights=str(path)))
    assert info["channels"] == 256 + 512 + 1024  # the paper's C = 1792
    assert extractor(torch.zeros(1, 3, 64, 64)).shape == (1, 1792, 16, 16)


def test_missing_or_wrong_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        create_backbone("resnet18", str(tmp_path / "none.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        create_backbone("resnet18", str(bad))


def test_fusion_is_eq8_upsample_and_concat():
    extractor, info = build_feature_extractor(BackboneConfig(avg_pool=False))
    assert info["channels"] == 24 + 40 + 112 and info["mean"] == [0.5, 0.5, 0.5]
    x = torch.randn(2, 3, 64, 64)
    fused = extractor(x)
    assert fused.shape == (2, 176, 16, 16)
    with torch.no_grad():
        l1, l2, l3 = extractor.backbone(x)
    assert torch.allclose(fused[:, :24], l1)
    up = F.interpolate(l3, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(fused[:, 64:], up, atol=1e-6)
    pooled, _ = build_feature_extractor(BackboneConfig(avg_pool=True))
    p = pooled(x)
    assert torch.allclose(p[:, :24], F.avg_pool2d(l1, 3, 1, 1), atol=1e-6)
    assert extractor.output_shape(64) == (176, 16, 16)


def test_frozen_extractor_stays_in_eval_and_has_no_grad():
    extractor, _ = build_feature_extractor(BackboneConfig())
    extractor.train()
    assert not extractor.backbone.training
    assert all(not p.requires_grad for p in extractor.parameters())


class _Counting(torch.nn.Module):
    def __init__(self, inner: FeatureExtractor) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_feature_cache_reuses_features(tmp_path, cache):
    clear_memory_cache()
    extractor, info = build_feature_extractor(BackboneConfig())
    counting = _Counting(extractor)
    cfg = DataConfig(image_size=32, texture_train_per_type=2, texture_test_normal_per_type=1,
                     texture_test_anomalous_per_type=1)
    ds = build_dataset(cfg, "test")
    sig = extractor_signature(info, extractor.state_dict())
    kw = dict(cache=cache, cache_dir=tmp_path, batch_size=4)
    first = extract_features(counting, ds, sig, torch.device("cpu"), **kw)
    assert counting.calls == len(ds) == 6
    second = extract_features(counting, ds, sig, torch.device("cpu"), **kw)
    assert counting.calls == 6  # nothing recomputed
    assert torch.equal(first.features, second.features)
    assert first.masks.shape == (6, 32, 32) and first.labels.tolist() == ds.labels
    if cache == "disk":
        assert len(list((tmp_path / sig).glob("*.pt"))) == 6
    other = build_dataset(DataConfig(**{**cfg.__dict__, "seed": 1}), "test")
    extract_features(counting, other, sig, torch.device("cpu"), **kw)
    assert counting.calls == 12  # other pixels, other keys
    half = extract_features(counting, ds, sig + "h", torch.device("cpu"), cache="none",
                            half=True)
    assert half.features.dtype == torch.float16
    assert np.allclose(half.features.float().numpy(), first.features.numpy(), atol=1e-2,
                       rtol=1e-2)
