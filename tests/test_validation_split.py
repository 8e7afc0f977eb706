"""The validation split (issue 10): held-out normal training images plus one synthetic
defect on each, never a test image, the same draw every time."""

from __future__ import annotations

import numpy as np
import pytest

from fedad.config.schema import DataConfig, RunConfig
from fedad.data.factory import build_dataset
from fedad.data.holdout import holdout_split
from fedad.data.synthetic import with_synthetic_anomalies
from fedad.errors import ConfigError, DataError


def _validation(seed: int = 0):
    cfg = DataConfig(texture_train_per_type=8, texture_test_normal_per_type=3,
                     texture_test_anomalous_per_type=3, image_size=64)
    train = build_dataset(cfg, "train")
    _, held = holdout_split([r.name for r in train.records], 0.4, seed=0)
    return train, train.subset(held), with_synthetic_anomalies(train.subset(held), seed), cfg


def test_validation_never_overlaps_the_test_set_and_adds_one_defect_per_image():
    train, held, val, cfg = _validation()
    test_paths = {r.path for r in build_dataset(cfg, "test").records}
    assert len(held) >= 2 and len(val) == 2 * len(held)
    assert not {r.path for r in val.records} & test_paths
    assert {r.path for r in val.records} == {r.path for r in held.records}
    assert val.labels == [0] * len(held) + [1] * len(held)
    for i in range(len(held)):
        normal, anomalous = val[i], val[len(held) + i]
        assert torch_equal(normal.image, held[i].image) and float(normal.mask.sum()) == 0
        m = anomalous.mask[0] > 0
        assert 0.005 < float(m.float().mean()) < 0.12  # a visible defect, not the image
        diff = (anomalous.image - normal.image).abs().sum(0)
        # outside the defect only the uint8 rounding of the resize: < 1/255 per channel
        assert float(diff[m].mean()) > 0.5 and float(diff[~m].max()) < 3 * (1 / 255) / 0.5
    # seeded by path: the same defects again, other ones for another seed
    again = with_synthetic_anomalies(held, 0)
    other = with_synthetic_anomalies(held, 1)
    k = len(held)
    assert torch_equal(again[k].image, val[k].image)
    assert not torch_equal(other[k].image, val[k].image)


def test_validation_starts_from_normal_images_only():
    cfg = DataConfig(texture_train_per_type=2, texture_test_normal_per_type=1,
                     texture_test_anomalous_per_type=1, image_size=32)
    with pytest.raises(DataError, match="must be normal"):
        with_synthetic_anomalies(build_dataset(cfg, "test"))


def test_each_client_gets_its_validation_features():
    from fedad.federation.site_data import load_client_data
    from partitions import site_indices

    cfg = RunConfig(num_clients=2)
    cfg.dataset.texture_train_per_type, cfg.dataset.image_size = 10, 64
    cfg.dataset.texture_test_normal_per_type = cfg.dataset.texture_test_anomalous_per_type = 2
    cfg.calibration.holdout = 0.3
    d = load_client_data(cfg, 0, 2, site_indices(cfg, 0, 2))
    assert d.validation is not None and len(d.validation) == 2 * len(d.holdout)
    assert d.validation.labels.tolist() == [0] * len(d.holdout) + [1] * len(d.holdout)
    assert not set(d.validation.paths) & set(d.test.paths)
    assert not set(d.validation.paths) & set(d.train.paths)  # never fitted on
    assert np.allclose(d.validation.features[: len(d.holdout)].numpy(),
                       d.holdout.features.numpy())


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_strength_blends_the_same_defect_in_part():
    _, held, full, _ = _validation()
    k = len(held)
    half = with_synthetic_anomalies(held, 0, strength=0.5)
    assert torch_equal(half[k].mask, full[k].mask)  # the same defect, drawn the same way
    d_full = (full[k].image - held[0].image).abs().sum()
    d_half = (half[k].image - held[0].image).abs().sum()
    assert float(d_half / d_full) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ConfigError, match="strength"):
        with_synthetic_anomalies(held, 0, strength=0.0)


def test_validation_signal_says_when_a_few_images_cannot_rank():
    from fedad.evaluation.chance import null_sd, validation_signal

    # Mann-Whitney's null variance: 4 + 4 images give sd sqrt(9 / 192)
    assert abs(null_sd(4, 4) - (9 / 192) ** 0.5) < 1e-12 and null_sd(0, 3) == float("inf")
    few = {str(k): {"val_i_auroc": 0.6, "val-images": 8} for k in range(5)}
    sig = validation_signal(few)
    assert sig.sites == 5 and sig.images == 40 and not sig.informative
    assert "not informative" in sig.describe() and "0.6000" not in sig.describe()
    many = {str(k): {"val_i_auroc": 0.6, "val-images": 200} for k in range(5)}
    assert validation_signal(many).informative  # the same mean, 25x the images
    assert validation_signal(many).describe() == "validation i_auroc 0.6000"
    assert validation_signal({"0": {"i_auroc": 0.9}}) is None  # no site holds a split


def test_a_site_that_holds_out_nothing_says_it_gets_no_threshold(caplog):
    import logging

    from fedad.federation.site_data import _client_data

    cfg = RunConfig()
    cfg.dataset.texture_train_per_type, cfg.dataset.image_size = 1, 32
    cfg.dataset.texture_test_normal_per_type = cfg.dataset.texture_test_anomalous_per_type = 1
    train, test = build_dataset(cfg.dataset, "train"), build_dataset(cfg.dataset, "test")
    one = train.subset([0])  # partition.min_samples=1 can leave a site one image
    assert len(holdout_split([r.name for r in one.records], 0.1, 0)[1]) == 0
    fedad = logging.getLogger("fedad")
    fedad.addHandler(caplog.handler)  # the fedad logger does not propagate
    try:
        data = _client_data(cfg, 3, "client 3", one, test)
    finally:
        fedad.removeHandler(caplog.handler)
    assert data.holdout is None and data.validation is None
    assert "client 3 holds out none of its 1 training image(s)" in caplog.text
    assert "no threshold" in caplog.text
