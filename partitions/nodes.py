"""Which training images each site of a partitioned dataset holds, as the node description
the core loads a site's data from (:class:`fedad.federation.site_data.NodeData`)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from fedad.config.schema import RunConfig
from fedad.data.factory import build_dataset
from fedad.federation.site_data import NodeData
from partitions.split import partition_indices

_PARTS: dict[str, tuple[tuple[int, ...], ...]] = {}


def site_indices(cfg: RunConfig, site: int, n: int) -> tuple[int, ...]:
    """The training-set indices of partition ``site`` of ``n`` (split once per process)."""
    key = json.dumps([asdict(cfg.dataset), asdict(cfg.partition), n], sort_keys=True)
    if key not in _PARTS:
        types = build_dataset(cfg.dataset, "train").product_types
        _PARTS[key] = tuple(tuple(p) for p in partition_indices(types, n, cfg.partition))
    return _PARTS[key][site]


def partition_node(cfg: RunConfig, node: NodeData) -> NodeData:
    """``node`` with the indices of its partition (a node with its own data root, or
    already holding them, is returned as it is)."""
    if node.num_partitions is None or node.indices is not None or node.data_root:
        return node
    if not 0 <= node.site < node.num_partitions:
        return node  # the core names the bad partition id
    return replace(node, indices=site_indices(cfg, node.site, node.num_partitions))


def partition_nodes(cfg: RunConfig) -> list[NodeData]:
    """Sites ``0..num_clients-1`` of ``cfg``'s dataset, each with its partition."""
    n = cfg.num_clients
    return [partition_node(cfg, NodeData(i, n)) for i in range(n)]
