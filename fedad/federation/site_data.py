"""A site's data as cached frozen features: either its partition of a shared training set
and the global test set (simulation), or a site's own data root (deployment). Built once per
process and run (Ray actors live across rounds; on real SuperNodes every message is a fresh
process, so use the disk feature cache there). No Flower here: every runner (Flower's
ClientApp, the in-process runner, ``fedad-centralized``) prepares its sites here.

Where a site's data comes from is its *node config* (``flower-supernode --node-config``,
or what a runner in one process makes up):

* ``partition-id`` / ``num-partitions``: this node's partition of the run's dataset (what
  simulation gives every node; also a quick way to split one shared dataset across hosts).
* ``data-root="/data"``: this host's *own* data (deployment). The whole training split and
  the test split under that root are used; ``partition-id``, if given, only names the site in
  metrics and seeds (else a number derived from the node id does). ``dataset-name``
  overrides the run's ``dataset.name`` for this node (a data root needs a file layout:
  ``mvtec``, ``mtd`` or ``visa``).
* ``cache-dir="/cache"``: keep frozen features on this node's disk (``backbone.cache=disk``):
  on a real SuperNode each message runs in a fresh process, so an in-memory cache is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from fedad.config.flat import to_flat
from fedad.config.schema import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.data.factory import FILE_DATASETS, build_dataset
from fedad.data.holdout import holdout_split
from fedad.data.synthetic import with_synthetic_anomalies
from fedad.device import resolve_device
from fedad.errors import ConfigError, DataError
from fedad.evaluation.metrics import evaluate
from fedad.features.cache import FeatureSet, dataset_features
from fedad.features.extractor import FeatureExtractor, build_feature_extractor

log = logging.getLogger("fedad")


@dataclass
class ClientData:
    """Frozen features of one client: ``train`` (what it fits on; in a file, read chunk by
    chunk, with ``backbone.stream``), ``holdout`` (normal training images it never fits on,
    for its threshold; ``None`` when it holds none out) and ``test``."""

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
    elif cfg.calibration.holdout > 0:
        log.warning("%s holds out none of its %d training image(s) (calibration.holdout "
                    "%g): it gets no threshold (fedad-predict gives scores, no decisions) "
                    "and no validation split; give it more images (partition.min_samples) "
                    "or raise calibration.holdout", who, len(train), cfg.calibration.holdout)
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
        train=dataset_features(cfg, extractor, info, train, device, f"{who} train features",
                               stream=cfg.backbone.stream),
        test=test_features,
        channels=info["channels"],
        device=device,
        holdout=holdout,
        validation=validation,
    )


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int,
                     indices: Sequence[int] | None = None) -> ClientData:
    """Partition ``partition_id`` of ``num_partitions`` of the training set (paper Sec. VI-A
    2): the training images at ``indices`` (what :mod:`partitions` splits; ``None`` with one
    partition: all of them), and the global test set (Eq. 4: the union of every client's
    test data).

    Raises:
        DataError: the partition id is out of range.
        ConfigError: several partitions and no indices.
    """
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} is not in [0, {num_partitions})")
    if indices is None and num_partitions != 1:
        raise ConfigError(f"partition {partition_id} of {num_partitions}: which training "
                          "images it holds is not given (partitions.partition_node splits "
                          "them)")
    key = _key(cfg, ("dataset", "backbone", "calibration"), partition_id, num_partitions,
               None if indices is None else list(map(int, indices)))
    if key in _DATA:
        return _DATA[key]
    train = build_dataset(cfg.dataset, "train")
    if indices is not None:
        train = train.subset(list(indices))
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


@dataclass(frozen=True)
class NodeData:
    """What the node config says about this node's data."""

    site: int
    num_partitions: int | None = None  # partition mode
    indices: tuple[int, ...] | None = None  # partition mode: its training images
    data_root: str | None = None  # own-data mode
    dataset_name: str | None = None
    cache_dir: str | None = None


def node_data(node_config: Mapping[str, object], node_id: int) -> NodeData:
    """Parse a node config (see the module docstring).

    Raises:
        ConfigError: neither a data root nor a partition, naming the node and the fix.
    """
    nc = node_config

    def text(key: str) -> str | None:
        return str(nc[key]) if key in nc and str(nc[key]) else None

    cache = text("cache-dir")
    if text("data-root"):
        # without partition-id, a site number from the node id (small enough for seeds and
        # int64 metrics)
        site = int(nc["partition-id"]) if "partition-id" in nc else int(node_id) % 2**31
        return NodeData(site, data_root=text("data-root"), dataset_name=text("dataset-name"),
                        cache_dir=cache)
    try:
        return NodeData(int(nc["partition-id"]), int(nc["num-partitions"]), cache_dir=cache)
    except KeyError as exc:
        raise ConfigError(
            f"node {node_id}: node config lacks {exc} and has no data-root; start the "
            "SuperNode with --node-config 'data-root=\"/path/to/site/data\"' (its own data) "
            "or 'partition-id=<i> num-partitions=<n>' (a partition of the run's dataset)"
        ) from exc


def node_config_applied(cfg: RunConfig, node: NodeData) -> RunConfig:
    """The run config as this node uses it (its data root, dataset layout, cache dir); a
    copy, ``cfg`` is left as it is."""
    if not (node.cache_dir or node.data_root):
        return cfg
    # the run's image size before a node's own data may change the dataset's name (the
    # server sized the detector from the run config)
    backbone, dataset = cfg.backbone, replace(cfg.dataset, image_size=cfg.dataset.scored_size())
    if node.cache_dir:
        backbone = replace(backbone, cache="disk", cache_dir=node.cache_dir)
    if node.data_root:
        dataset = replace(dataset, root=node.data_root,
                          name=node.dataset_name or cfg.dataset.name)
        if dataset.name not in FILE_DATASETS:
            raise ConfigError(
                f"site {node.site}: node config data-root={node.data_root!r} needs a file "
                f"layout, but dataset.name is {dataset.name!r}; set dataset.name to one of "
                f"{', '.join(FILE_DATASETS)} in the run config or dataset-name in the node "
                "config")
    return replace(cfg, backbone=backbone, dataset=dataset)


def load_node_data(cfg: RunConfig, node: NodeData) -> tuple[ClientData, float]:
    """This node's data (``cfg`` as :func:`node_config_applied` gives it, features as the
    detector reads them) and the seconds spent getting it (feature extraction on the first
    call in a process, a cache hit after)."""
    t0 = time.perf_counter()
    if node.data_root:
        data = load_site_data(cfg, node.site)
    else:
        assert node.num_partitions is not None
        data = load_client_data(cfg, node.site, node.num_partitions, node.indices)
    return data, time.perf_counter() - t0


def site_images(cfg: RunConfig, node: NodeData) -> tuple[AnomalyDataset, AnomalyDataset]:
    """This node's training images it fits on (its partition or its own data root, less
    the held-out ones) and its test images, as datasets of pixels normalised for the
    backbone (``cfg`` as :func:`node_config_applied` gives it): what a refinement that works
    on the image (F2PAD) needs beside the cached features."""
    _, info = extractor_for(cfg)
    train = build_dataset(cfg.dataset, "train")
    if not node.data_root and node.indices is not None:
        train = train.subset(list(node.indices))
    fit_idx, _ = holdout_split([r.name for r in train.records], cfg.calibration.holdout,
                               cfg.calibration.seed)
    train = train.subset(fit_idx)
    test = build_dataset(cfg.dataset, "test")
    for ds in (train, test):
        ds.set_normalisation(info["mean"], info["std"])
    return train, test
