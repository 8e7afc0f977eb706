"""Split training samples over federated clients by product type, and report the split."""

from __future__ import annotations

from partitions.nodes import partition_node, partition_nodes, site_indices
from partitions.report import counts_table, plot_counts
from partitions.split import partition_indices

__all__ = ["counts_table", "partition_indices", "partition_node", "partition_nodes",
           "plot_counts", "site_indices"]
