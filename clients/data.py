"""A client's data as cached frozen features: either its partition of a shared training set
and the global test set (simulation), or a site's own data root (deployment). Built once per
process and run (Ray actors live across rounds; on real SuperNodes every message is a fresh
process, so use the disk feature cache there)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import torch

from fedad.config import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.data.factory import build_dataset
from fedad.data.holdout import holdout_split
from fedad.data.synthetic import with_synthetic_anomalies
from fedad.device import resolve_device
from fedad.errors import DataError
from fedad.feature_cache import FeatureSet, dataset_features
from fedad.features import FeatureExtractor, build_feature_extractor
from fedad.metrics import evaluate
from fedad.runconfig import to_flat
from partitions import partition_indices

log = logging.getLogger("fedad")


@dataclass
class ClientData:
    """Frozen features of one client: ``train`` (what it fits on), ``holdout`` (normal
    training images it never fits on, for its threshold; ``None`` when it holds none out)
    and ``test``."""

    partition_id: int
    train: FeatureSet
    test: FeatureSet
    channels: int
    device: torch.device
    holdout: FeatureSet | None = None
    # the held-out normals and one synthetic-defect copy of each (fedad/data/synthetic.py):
    # the validation split that choices are made on, never the test set
    validation: FeatureSet | None = None


_EXTRACTORS: dict[str, tuple[FeatureExtractor, dict]] = {}
_DATA: dict[str, ClientData] = {}
_TEST: dict[str, FeatureSet] = {}


def _key(cfg: RunConfig, groups: tuple[str, ...], *extra: object) -> str:
    flat = {k: v for k, v in to_flat(cfg).items() if k.split(".")[0] in groups}
    blob = json.dumps([flat, *map(str, extra)], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def extractor_for(cfg: RunConfig) -> tuple[FeatureExtractor, dict]:
    key = json.dumps(to_flat(cfg.backbone), sort_keys=True)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = build_feature_extractor(cfg.backbone)
    return _EXTRACTORS[key]


def _client_data(cfg: RunConfig, site: int, who: str, train: AnomalyDataset,
                 test: AnomalyDataset | None = None) -> ClientData:
    """Features of ``train`` (less the held-out images, see :func:`holdout_split`) and of
    ``test`` (``None``: the global test set, one copy per process shared by the clients it
    hosts)."""
    device = resolve_device(cfg.device)
    extractor, info = extractor_for(cfg)
    fit_idx, held_idx = holdout_split([r.name for r in train.records],
                                      cfg.calibration.holdout, cfg.calibration.seed)
    holdout = validation = None
    if len(held_idx):
        held = train.subset(held_idx)
        holdout = dataset_features(cfg, extractor, info, held, device,
                                   f"{who} held-out features")
        validation = dataset_features(cfg, extractor, info,
                                      with_synthetic_anomalies(held, cfg.calibration.seed,
                                                               cfg.calibration.synthetic_strength),
                                      device, f"{who} validation features")
        train = train.subset(fit_idx)
    if test is None:
        test_key = _key(cfg, ("dataset", "backbone"))
        if test_key not in _TEST:
            _TEST[test_key] = dataset_features(cfg, extractor, info,
                                               build_dataset(cfg.dataset, "test"), device,
                                               "test features")
        test_features = _TEST[test_key]
    else:
        test_features = dataset_features(cfg, extractor, info, test, device,
                                         f"{who} test features")
    return ClientData(
        partition_id=site,
        train=dataset_features(cfg, extractor, info, train, device, f"{who} train features"),
        test=test_features,
        channels=info["channels"],
        device=device,
        holdout=holdout,
        validation=validation,
    )


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Partition ``partition_id`` of ``num_partitions`` of the training set (paper Sec. VI-A
    2) and the global test set (Eq. 4: the union of every client's test data).

    Raises:
        DataError: the partition id is out of range.
    """
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} is not in [0, {num_partitions})")
    key = _key(cfg, ("dataset", "backbone", "partition", "calibration"), partition_id,
               num_partitions)
    if key in _DATA:
        return _DATA[key]
    train_all = build_dataset(cfg.dataset, "train")
    parts = partition_indices(train_all.product_types, num_partitions, cfg.partition)
    train = train_all.subset(parts[partition_id])
    log.info("client %d: %d training images (%s)", partition_id, len(train),
             ", ".join(f"{t}={train.product_types.count(t)}"
                       for t in sorted(set(train.product_types))))
    _DATA[key] = _client_data(cfg, partition_id, f"client {partition_id}", train)
    return _DATA[key]


def load_site_data(cfg: RunConfig, site: int) -> ClientData:
    """A site's own data (deployment): the whole training split and the test split found
    under ``cfg.dataset.root``, which the node config set to this host's data root."""
    key = _key(cfg, ("dataset", "backbone", "calibration"), "site", site)
    if key in _DATA:
        return _DATA[key]
    train = build_dataset(cfg.dataset, "train")
    if len(train) == 0:
        raise DataError(f"site {site}: no training images under {cfg.dataset.root}")
    test = build_dataset(cfg.dataset, "test")
    log.info("site %d: %d training, %d test images under %s", site, len(train), len(test),
             cfg.dataset.root)
    _DATA[key] = _client_data(cfg, site, f"site {site}", train, test)
    return _DATA[key]


def validation_metrics(data: ClientData, scores) -> dict[str, float]:
    """``val_i_auroc`` and ``val_p_auroc`` of ``scores`` of ``data.validation``."""
    v = evaluate(scores.image, data.validation.labels, scores.maps, data.validation.masks)
    return {"val_i_auroc": v["i_auroc"], "val_p_auroc": v["p_auroc"]}
