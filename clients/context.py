"""From a Flower ``Context`` to what every handler needs: the run config, the node's data
(chosen by its node config) and its (cached) features.

Node config keys (``flower-supernode --node-config '...'``):

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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import Context, Message

from clients.data import ClientData, load_client_data, load_site_data
from fedad.checkpoint import load_client, save_client
from fedad.config import RunConfig
from fedad.data.factory import FILE_DATASETS
from fedad.detectors.registry import feature_config
from fedad.errors import ConfigError
from fedad.payload import CONFIG
from fedad.runconfig import from_flat

log = logging.getLogger("fedad")


@dataclass(frozen=True)
class NodeData:
    """What the node config says about this node's data."""

    site: int
    num_partitions: int | None = None  # partition mode
    data_root: str | None = None  # own-data mode
    dataset_name: str | None = None
    cache_dir: str | None = None


def node_data(context: Context) -> NodeData:
    """Parse the node config (see the module docstring).

    Raises:
        ConfigError: neither a data root nor a partition, naming the node and the fix.
    """
    nc = context.node_config

    def text(key: str) -> str | None:
        return str(nc[key]) if key in nc and str(nc[key]) else None

    cache = text("cache-dir")
    if text("data-root"):
        # without partition-id, a site number from the node id (small enough for seeds and
        # int64 metrics)
        site = int(nc["partition-id"]) if "partition-id" in nc else int(context.node_id) % 2**31
        return NodeData(site, data_root=text("data-root"), dataset_name=text("dataset-name"),
                        cache_dir=cache)
    try:
        return NodeData(int(nc["partition-id"]), int(nc["num-partitions"]), cache_dir=cache)
    except KeyError as exc:
        raise ConfigError(
            f"node {context.node_id}: node config lacks {exc} and has no data-root; start the "
            "SuperNode with --node-config 'data-root=\"/path/to/site/data\"' (its own data) "
            "or 'partition-id=<i> num-partitions=<n>' (a partition of the run's dataset)"
        ) from exc


def node_config_applied(cfg: RunConfig, node: NodeData) -> RunConfig:
    """The run config as this node uses it (its data root, dataset layout, cache dir)."""
    if node.cache_dir:
        cfg.backbone.cache, cfg.backbone.cache_dir = "disk", node.cache_dir
    if node.data_root:
        cfg.dataset.root = node.data_root
        cfg.dataset.name = node.dataset_name or cfg.dataset.name
        if cfg.dataset.name not in FILE_DATASETS:
            raise ConfigError(
                f"site {node.site}: node config data-root={node.data_root!r} needs a file "
                f"layout, but dataset.name is {cfg.dataset.name!r}; set dataset.name to one of "
                f"{', '.join(FILE_DATASETS)} in the run config or dataset-name in the node "
                "config")
    return cfg


def client_setup(context: Context) -> tuple[RunConfig, ClientData, float]:
    """Run config, this client's data and the seconds spent getting it (feature extraction
    on the first call in a process, a cache hit after)."""
    node = node_data(context)
    # the backbone levels the detector reads (registry.feature_config)
    cfg = feature_config(node_config_applied(from_flat(context.run_config), node))
    t0 = time.perf_counter()
    if node.data_root:
        data = load_site_data(cfg, node.site)
    else:
        assert node.num_partitions is not None
        data = load_client_data(cfg, node.site, node.num_partitions)
    return cfg, data, time.perf_counter() - t0


def restored_state(context: Context, msg: Message, key: str, site: int,
                   stateful: Callable[[], bool]) -> dict[str, torch.Tensor] | None:
    """The client's state between rounds: ``context.state[key]``, or, in the first round of
    a resumed run (the message carries ``resume-round``; a fresh process has no state), the
    site's checkpoint of that round (:mod:`fedad.checkpoint`). ``None``: nothing to restore.

    Raises:
        ConfigError: a resumed run, a client with state (``stateful()``, asked only then)
            and no checkpoint of the round.
    """
    if key in context.state:
        return context.state[key].to_torch_state_dict()
    conf = msg.content[CONFIG] if CONFIG in msg.content else {}
    if "resume-round" not in conf or not str(conf.get("out", "")):
        return None
    try:
        state = load_client(str(conf["out"]), site, int(conf["resume-round"]))
    except ConfigError:
        if stateful():
            raise
        return None
    return state


def checkpoint(msg: Message, site: int, rnd: int, state: dict[str, torch.Tensor]) -> None:
    """Keep the client's state after round ``rnd`` in ``<run dir>/site-<id>/`` (when the
    server named the run folder), so a killed run can resume."""
    conf = msg.content[CONFIG] if CONFIG in msg.content else {}
    if not str(conf.get("out", "")):
        return
    try:
        save_client(str(conf["out"]), site, rnd, state)
    except OSError as exc:  # e.g. the server's run folder is not writable on this host
        log.warning("site %d: no checkpoint of round %d (%s); a resumed run cannot restore "
                    "this client's state", site, rnd, exc)
