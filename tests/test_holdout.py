"""Held-out normal training images: the same images whatever the partition, never test
images, about the asked fraction, and always something left to fit on."""

from __future__ import annotations

import numpy as np
import pytest

from fedad.config.schema import DataConfig, PartitionConfig
from fedad.data.factory import build_dataset
from fedad.data.holdout import holdout_split
from fedad.errors import ConfigError
from partitions import partition_indices


def test_membership_does_not_depend_on_the_partition():
    cfg = DataConfig(texture_train_per_type=30)
    train = build_dataset(cfg, "train")
    paths = [r.path for r in train.records]
    _, held_all = holdout_split(paths, 0.2, seed=3)
    central = {paths[i] for i in held_all}
    parts = partition_indices(train.product_types, 4, PartitionConfig(alpha=0.3, seed=1))
    union: set[str] = set()
    for idx in parts:
        sub = [paths[i] for i in idx]
        fit, held = holdout_split(sub, 0.2, seed=3)
        assert len(fit) >= 1 and not set(fit) & set(held)
        union |= {sub[i] for i in held}
    assert union == central  # federated clients hold out exactly the centralized images
    assert 0.1 < len(central) / len(paths) < 0.3
    assert holdout_split(paths, 0.2, seed=4)[1].tolist() != held_all.tolist()  # seeded


def test_held_out_images_are_training_images_never_test_images():
    cfg = DataConfig(texture_train_per_type=10, texture_test_normal_per_type=5)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    paths = [r.path for r in train.records]
    _, held = holdout_split(paths, 0.5, seed=0)
    assert len(held) and not {paths[i] for i in held} & {r.path for r in test.records}


def test_edges():
    fit, held = holdout_split(["a"], 0.99, seed=0)
    assert fit.tolist() == [0] and held.size == 0  # one image always stays for fitting
    assert holdout_split(["a", "b"], 0.0, seed=0)[1].size == 0
    with pytest.raises(ConfigError, match="calibration.holdout"):
        holdout_split(["a"], 1.0, seed=0)
    assert isinstance(holdout_split([], 0.5, 0)[0], np.ndarray)


def test_held_out_images_and_synthetic_defects_do_not_depend_on_where_the_data_lie(tmp_path):
    """A site that moves its data folder (another disk, another machine) holds out the same
    images and draws the same validation defects: both are drawn from the path relative to
    the dataset root."""
    import shutil

    from fedad.cli.sites import make_sites
    from fedad.data.synthetic import with_synthetic_anomalies

    (site,) = make_sites(["dataset.texture_train_per_type=8", "partition.min_samples=1"],
                         tmp_path / "a", 1)
    moved = shutil.copytree(site, tmp_path / "elsewhere" / "deeper" / "site")
    chosen = []
    for root in (site, moved):
        train = build_dataset(DataConfig(name="mvtec", root=str(root)), "train")
        assert all(not r.name.startswith("/") and r.path.startswith(str(root))
                   for r in train.records)
        _, held = holdout_split([r.name for r in train.records], 0.3, seed=0)
        val = with_synthetic_anomalies(train.subset(held), seed=0, strength=1.0)
        chosen.append(([train.records[i].name for i in held],
                       [r.defect_type for r in val.records],
                       val[len(held)].mask.sum().item() if len(held) else None))
    assert chosen[0] == chosen[1] and chosen[0][0]
