"""Tests of the embedded ``textures`` dataset."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from fedad.config.schema import DataConfig
from fedad.data import textures
from fedad.data.sample import ANOMALOUS, NORMAL, SampleRecord
from fedad.data.textures import (
    DEFECT_TYPES,
    TEXTURE_NAMES,
    InMemorySource,
    apply_defect,
    build_texture_dataset,
    fractal_noise,
    generate_textures,
    perlin_noise,
    save_preview,
)
from fedad.errors import ConfigError, DataError

PATH_RE = re.compile(r"^textures:(brick|grass|gravel)/(train|test)/(good|cut_paste|perlin_blob|"
                     r"scratch)/\d{3}$")


@pytest.fixture(scope="module")
def default_sets():
    cfg = DataConfig()
    return cfg, {split: generate_textures(cfg, split) for split in ("train", "test")}


def _small_cfg(**kw) -> DataConfig:
    base = dict(texture_train_per_type=6, texture_test_normal_per_type=3,
                texture_test_anomalous_per_type=6, texture_crop=64)
    base.update(kw)
    return DataConfig(**base)


def test_counts_labels_and_paths(default_sets):
    cfg, sets = default_sets
    train_records, train_arrays = sets["train"]
    test_records, test_arrays = sets["test"]
    assert len(train_records) == 3 * cfg.texture_train_per_type
    n_test = cfg.texture_test_normal_per_type + cfg.texture_test_anomalous_per_type
    assert len(test_records) == 3 * n_test
    for texture in TEXTURE_NAMES:
        tr = [r for r in train_records if r.product_type == texture]
        te = [r for r in test_records if r.product_type == texture]
        assert len(tr) == cfg.texture_train_per_type
        assert all(r.label == NORMAL and r.defect_type == "good" for r in tr)
        labels = Counter(r.label for r in te)
        assert labels[NORMAL] == cfg.texture_test_normal_per_type
        assert labels[ANOMALOUS] == cfg.texture_test_anomalous_per_type
        defects = Counter(r.defect_type for r in te if r.label == ANOMALOUS)
        assert set(defects) == set(DEFECT_TYPES)
        assert max(defects.values()) - min(defects.values()) <= 1  # cycled
    for records, arrays, split in ((train_records, train_arrays, "train"),
                                   (test_records, test_arrays, "test")):
        paths = [r.path for r in records]
        assert len(set(paths)) == len(paths) and set(paths) == set(arrays)
        for r in records:
            m = PATH_RE.match(r.path)
            assert m, r.path
            assert m.groups() == (r.product_type, split, r.defect_type)
            image, mask = arrays[r.path]
            s = cfg.texture_crop
            assert image.shape == (s, s, 3) and image.dtype == np.uint8
            assert np.array_equal(image[..., 0], image[..., 2])  # gray replicated to RGB
            if r.is_normal:
                assert r.mask_path is None and mask is None
            else:
                assert r.mask_path == r.path + "#mask"
                assert mask.shape == (s, s) and mask.dtype == bool


def test_anomalous_masks_cover_reasonable_area(default_sets):
    _, sets = default_sets
    records, arrays = sets["test"]
    fractions = [arrays[r.path][1].mean() for r in records if r.label == ANOMALOUS]
    assert fractions
    assert all(0.005 <= f <= 0.20 for f in fractions), fractions


def test_deterministic_for_seed():
    cfg = _small_cfg(seed=3)
    recs_a, arr_a = generate_textures(cfg, "test")
    recs_b, arr_b = generate_textures(_small_cfg(seed=3), "test")
    assert recs_a == recs_b
    for path, (img, mask) in arr_a.items():
        assert img.tobytes() == arr_b[path][0].tobytes()
        assert (mask is None) == (arr_b[path][1] is None)
        if mask is not None:
            assert mask.tobytes() == arr_b[path][1].tobytes()
    _, arr_c = generate_textures(_small_cfg(seed=4), "test")
    assert sum(not np.array_equal(arr_a[p][0], arr_c[p][0]) for p in arr_a) == len(arr_a)


def test_texture_streams_independent_of_other_types():
    _, both = generate_textures(_small_cfg(), "train")
    _, alone = generate_textures(_small_cfg(texture_types=["gravel"]), "train")
    assert set(alone) == {p for p in both if p.startswith("textures:gravel/")}
    assert all(np.array_equal(alone[p][0], both[p][0]) for p in alone)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
@pytest.mark.parametrize("texture", TEXTURE_NAMES)
def test_mask_is_exact(defect, texture):
    """Pixels outside the mask are untouched; inside, the defect changes them strongly."""
    rng = np.random.default_rng(11)
    for _ in range(4):
        base = textures._normal_crop(rng, texture, "test", 96)
        image, mask = apply_defect(base, defect, rng, texture)
        assert image.shape == base.shape and image.dtype == np.uint8
        assert 0.005 <= mask.mean() <= 0.20
        assert np.array_equal(image[~mask], base[~mask])
        diff = np.abs(image.astype(int) - base.astype(int))[mask]
        assert diff.mean() >= 20.0, (defect, texture, diff.mean())
        assert (diff >= 5).mean() >= 0.6


def test_train_and_test_regions_disjoint(monkeypatch):
    # A fake photo whose left 60% (train) is dark and right 40% (test) bright reveals where
    # each crop came from, even after jitter and flips.
    fake = np.full((512, 512), 50, dtype=np.uint8)
    fake[:, textures._SPLIT_COLUMN:] = 200
    monkeypatch.setattr(textures, "_photo", lambda name: fake)
    cfg = _small_cfg(texture_train_per_type=20, texture_test_normal_per_type=20,
                     texture_test_anomalous_per_type=0, texture_crop=textures.MAX_CROP)
    _, train = generate_textures(cfg, "train")
    _, test = generate_textures(cfg, "test")
    assert all(img.max() <= 60 for img, _ in train.values())
    assert all(img.min() >= 190 for img, _ in test.values())


def test_no_test_crop_equals_a_train_crop(default_sets):
    _, sets = default_sets
    train = {img.tobytes() for img, _ in sets["train"][1].values()}
    assert not any(img.tobytes() in train for img, _ in sets["test"][1].values())


def test_anomaly_dataset_shapes():
    cfg = _small_cfg(image_size=64, texture_crop=96)
    ds = build_texture_dataset(cfg, "test")
    assert ds.has_masks and ds.image_size == 64
    assert len(ds) == 3 * (3 + 6)
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert tuple(sample.image.shape) == (3, 64, 64)
        assert tuple(sample.mask.shape) == (1, 64, 64)
        assert sample.path == ds.records[i].path
        if sample.label == ANOMALOUS:
            assert sample.mask.sum() > 0
        else:
            assert sample.mask.sum() == 0
        seen.add(sample.label)
    assert seen == {NORMAL, ANOMALOUS}
    train = build_texture_dataset(cfg, "train")
    assert set(train.labels) == {NORMAL} and len(train) == 18


def test_in_memory_source_unknown_path_raises():
    records, arrays = generate_textures(_small_cfg(texture_types=["brick"]), "test")
    src = InMemorySource(arrays)
    anomalous = next(r for r in records if r.label == ANOMALOUS)
    assert src.load_mask(anomalous, (64, 64)) is arrays[anomalous.path][1]
    normal = next(r for r in records if r.label == NORMAL)
    assert src.load_mask(normal, (64, 64)) is None
    ghost = SampleRecord("textures:brick/test/good/999", NORMAL, "brick")
    with pytest.raises(DataError, match="good/999"):
        src.load_image(ghost)
    with pytest.raises(DataError, match="good/999"):
        src.load_mask(ghost, (64, 64))


def test_config_and_split_errors():
    with pytest.raises(ConfigError, match="marble") as info:
        generate_textures(DataConfig(texture_types=["brick", "marble"]), "train")
    assert all(name in str(info.value) for name in TEXTURE_NAMES)
    with pytest.raises(ConfigError):
        build_texture_dataset(DataConfig(texture_types=["carpet"]), "test")
    with pytest.raises(ConfigError, match="texture_crop"):
        generate_textures(DataConfig(texture_crop=textures.MAX_CROP + 1), "test")
    with pytest.raises(DataError, match="val"):
        generate_textures(DataConfig(), "val")


def test_perlin_noise_is_smooth_and_deterministic():
    a = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    b = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert np.array_equal(a, b)
    assert np.allclose(a[::16, ::16], 0.0)  # zero on lattice points
    assert a.std() > 0.05
    assert np.abs(np.diff(a, axis=0)).max() < 0.2 and np.abs(np.diff(a, axis=1)).max() < 0.2
    f = fractal_noise((64, 64), (2, 2), np.random.default_rng(0), octaves=3)
    assert f.shape == (64, 64) and np.isfinite(f).all()


def test_save_preview_writes_png(tmp_path):
    out = save_preview(_small_cfg(texture_crop=48), tmp_path / "sub" / "preview.png",
                       n_normal=1, n_anomalous=3)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
