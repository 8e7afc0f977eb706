"""From a Flower ``Context`` to what every handler needs: the run config, the node's
partition and its (cached) data."""

from __future__ import annotations

import time

from flwr.app import Context

from clients.data import ClientData, load_client_data
from fedad.config import RunConfig
from fedad.runconfig import from_flat


def node_partition(context: Context) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from the node config."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise KeyError(f"node {context.node_id}: node config lacks {exc}; start the SuperNode "
                       "with --node-config 'partition-id=<i> num-partitions=<n>'") from exc


def client_setup(context: Context) -> tuple[RunConfig, ClientData, float]:
    """Run config, this client's data and the seconds spent getting it (feature extraction
    on the first call in a process, a cache hit after)."""
    cfg = from_flat(context.run_config)
    pid, n = node_partition(context)
    t0 = time.perf_counter()
    data = load_client_data(cfg, pid, n)
    return cfg, data, time.perf_counter() - t0
