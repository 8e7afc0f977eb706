"""FedDyMem's config sections (``head``, ``feddymem``): the trainable head and the method's
own knobs. Plain dataclasses (layer 0 of the package: they import only fedad.config), read
into :class:`fedad.config.schema.RunConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from fedad.config.fields import choice


@dataclass
class HeadConfig:
    """The trainable FedDyMem head: projection (Eq. 9) and memory generator (Eq. 10-11)."""

    projection: bool = True
    generator: bool = True
    grid_size: int = 8
    phi_hidden: int = 64
    batch_norm: bool = False  # BatchNorm in the projection (for FedBN comparisons)
    # default: PyTorch's initialisation (the paper names none) | identity (beyond the paper:
    # the head starts as the frozen features, M = sigma(F), so training refines the bank-only
    # detector instead of starting from a random mixing of channels)
    init: str = choice("default", "identity")


@dataclass
class FedDyMemConfig:
    """FedDyMem's own knobs: the metric loss (Eq. 12), memory-reduce (Eq. 14-16) and the
    server's aggregation (Alg. 3), with the switches beyond the paper (all off)."""

    top_k: int = 3
    threshold: float = 0.01
    # Beyond the paper: >0 sets Eq. 12's th to this multiple of the bank's median
    # nearest-neighbour spacing, so patches already as close to the bank as its own
    # features are to each other are not pulled further (0: the absolute `threshold`)
    threshold_scale: float = 0.0
    # Server step: kmeans (Alg. 3) | average (Table III's ablation, positional banks only)
    # | coreset (beyond the paper: greedy coreset of the union, keeps what clients kept)
    aggregation: str = choice("kmeans", "average", "coreset")
    # Client memory-reduce: positional (paper, Eq. 14-16: one (H, W, C) map) | coreset |
    # kmeans (beyond the paper: bank_size representatives of all memory features, see
    # fedad/detectors/feddymem/set_reduce.py)
    reduce: str = choice("positional", "coreset", "kmeans")
    bank_size: int = 0  # features in a set bank (0: H*W, the paper's upload size)
    rema: bool = True  # Eq. 16's rEMA (set banks: each representative with its match)
    # Beyond the paper: CFA's repulsive term on the K+1..K+J nearest bank features with
    # weight `repulsion` (0: Eq. 12 alone) and a margin of `repulsion_margin` times the
    # bank's median nearest-neighbour spacing.
    repulsion: float = 0.0
    repulsion_j: int = 3
    repulsion_margin: float = 1.0
    kmeans_init: str = choice("positional", "kmeans++", "random")  # feddymem/aggregate.py
    # Beyond the paper (benchmarks/feddymem_head.py's switches, all off by default):
    # target: what Eq. 12 pulls toward after round 0: global (Alg. 5, the bank M^{t-1}
    # rebuilt every round from the heads' own outputs) | initial (CFA's reading: the round-0
    # global bank M^0, kept for training and scoring; sites upload it unchanged)
    target: str = choice("global", "initial")
    # distance: euclidean (Eq. 12: ||m - m'||_2 - th) | squared (CFA: ||m - m'||^2 - th^2,
    # the repulsive term likewise)
    distance: str = choice("euclidean", "squared")
    # >0: anchor * mean ||M - M_0||^2 added to the loss, M_0 the memory features of the
    # head as the site drew it (its round-0 weights), so training refines the start
    anchor: float = 0.0


# moved from ``train`` to ``feddymem``: old run configs (config.json, run_config.toml,
# overrides) that name them under ``train`` are read as the new keys
MOVED_TO_FEDDYMEM = ("top_k", "threshold", "threshold_scale", "aggregation", "reduce",
                     "bank_size", "rema", "repulsion", "repulsion_j", "repulsion_margin",
                     "kmeans_init")
