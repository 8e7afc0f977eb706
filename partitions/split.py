"""Split training samples over federated clients by product type (paper Sec. VI-A 2).

Three methods, all built on flwr-datasets partitioners over a local
``datasets.Dataset.from_dict({"index": ..., "product_type": ...})`` (nothing touches the hub):

* ``dirichlet``: :class:`~flwr_datasets.partitioner.DirichletPartitioner`. For every product
  type it draws client shares from ``Dirichlet(alpha)``; a small ``alpha`` gives clients
  dominated by one type, a large one near-uniform type mixtures. It re-draws (up to 11 draws)
  until every client has ``min_partition_size`` samples, then raises ``ValueError``.
* ``iid``: :class:`~flwr_datasets.partitioner.IidPartitioner`. It only cuts the dataset into
  contiguous, near-equal shards and does not shuffle, so the rows are permuted with the seed
  first (otherwise a type-sorted sample list would give clients one type each).
* ``pathological``: :class:`~flwr_datasets.partitioner.PathologicalPartitioner` with one class
  per partition in ``deterministic`` mode: client ``i`` gets the ``i mod T``-th product type
  (types sorted by name); clients sharing a type split its samples into near-equal chunks.
  The rows are permuted with the seed first so the seed decides which samples of a shared
  type go to which client.

What flwr-datasets does not do for us, and is done here:

* The Dirichlet partitioner gives up after 11 draws even when the target is merely unlikely
  (about 1% of seeds for 3 types x 40 samples over 5 clients at ``alpha=0.1``). We run up to
  :data:`DIRICHLET_RESEEDS` partitioners: the first with ``cfg.seed`` (identical to plain
  flwr-datasets), the others with seeds derived deterministically from it. Its per-draw
  warnings are silenced; a final failure is a :class:`~fedad.errors.ConfigError` naming the
  fix.
* With fewer clients than product types the pathological partitioner silently drops the
  unassigned types (only a warning). We refuse instead (``ConfigError``): "one product type
  per client" cannot use every sample then; the message names the fixes (more clients,
  fewer ``dataset.categories``, or another method). Assigning several types per client would
  silently turn the method into something else.
* No partitioner enforces a minimum size except Dirichlet; every method's result is checked
  here. A client with fewer than ``max(1, partition.min_samples)`` samples is never returned
  silently: it is a ``ConfigError`` naming the client(s) and the fix.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedad.config.schema import PartitionConfig
from fedad.errors import ConfigError

if TYPE_CHECKING:  # flwr-datasets and datasets load in ~1.4 s: only when a split is drawn
    import datasets
    from flwr_datasets.partitioner import Partitioner

VALID_METHODS = ("dirichlet", "iid", "pathological")
"""Values accepted for ``partition.method``."""

DIRICHLET_RESEEDS = 10
"""Dirichlet partitioners tried (each re-draws up to 11 times) before giving up."""

_FIX = {
    "dirichlet": "raise partition.alpha, lower num_clients, or lower partition.min_samples",
    "iid": "lower num_clients or lower partition.min_samples",
    "pathological": (
        "lower num_clients (fewer clients per product type) or lower partition.min_samples"
    ),
}


def partition_indices(
    product_types: Sequence[str], num_clients: int, cfg: PartitionConfig
) -> list[list[int]]:
    """Split training samples over clients.

    Args:
        product_types: product type of every training sample, in dataset order.
        num_clients: number of clients (partitions).
        cfg: method (``dirichlet`` | ``iid`` | ``pathological``), ``alpha``, ``min_samples``
            (every client gets at least ``max(1, min_samples)`` samples) and ``seed``.

    Returns:
        Per client, the sorted indices into ``product_types``; every index appears exactly
        once over all clients. The same inputs and seed always give the same result.

    Raises:
        ConfigError: invalid ``num_clients``/``alpha``/``min_samples``/``method``, or a split
            that would leave a client with too few samples (the message names the fix).
    """
    types = [str(t) for t in product_types]
    min_size = _validate(types, num_clients, cfg)
    method = cfg.method
    if method == "dirichlet":
        parts = _dirichlet(types, num_clients, cfg, min_size)
    elif method == "iid":
        parts = _iid(types, num_clients, cfg.seed)
    else:
        parts = _pathological(types, num_clients, cfg.seed, min_size)
    parts = [sorted(int(i) for i in p) for p in parts]
    _check_cover(parts, len(types))
    _check_sizes(parts, method, min_size)
    return parts


def _validate(types: list[str], num_clients: int, cfg: PartitionConfig) -> int:
    """Check the arguments; return the effective minimum client size."""
    if cfg.method not in VALID_METHODS:
        raise ConfigError(
            f"partition.method={cfg.method!r} is unknown; valid methods: {', '.join(VALID_METHODS)}"
        )
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, numbers.Integral)
        or num_clients < 1
    ):
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    alpha = cfg.alpha
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ConfigError(f"partition.alpha must be a finite number > 0, got {alpha!r}")
    min_samples = cfg.min_samples
    if (
        isinstance(min_samples, bool)
        or not isinstance(min_samples, numbers.Integral)
        or min_samples < 0
    ):
        raise ConfigError(f"partition.min_samples must be an integer >= 0, got {min_samples!r}")
    if not isinstance(cfg.seed, numbers.Integral):
        raise ConfigError(f"partition.seed must be an integer, got {cfg.seed!r}")
    min_size = max(1, int(min_samples))
    n = len(types)
    if n < num_clients * min_size:
        fixes = []
        if n // min_size >= 1:
            fixes.append(f"lower num_clients (to at most {n // min_size})")
        if n >= num_clients:
            fixes.append(f"lower partition.min_samples (to at most {n // num_clients})")
        fixes.append(f"use at least {num_clients * min_size} training images")
        raise ConfigError(
            f"{n} training sample(s) cannot give each of {num_clients} clients at least "
            f"{min_size} sample(s) (partition.min_samples); " + ", or ".join(fixes)
        )
    return min_size


def _local_dataset(types: list[str], order: np.ndarray | None = None) -> datasets.Dataset:
    """An in-memory dataset with an ``index`` and a ``product_type`` column."""
    import datasets
    idx = np.arange(len(types)) if order is None else order
    return datasets.Dataset.from_dict(
        {"index": [int(i) for i in idx], "product_type": [types[int(i)] for i in idx]}
    )


def _read(partitioner: Partitioner, num_clients: int) -> list[list[int]]:
    """Each partition's ``index`` column."""
    return [list(partitioner.load_partition(c)["index"]) for c in range(num_clients)]


def _dirichlet(
    types: list[str], num_clients: int, cfg: PartitionConfig, min_size: int
) -> list[list[int]]:
    from flwr_datasets.partitioner import DirichletPartitioner

    ds = _local_dataset(types)
    seeds = [int(cfg.seed)] + [
        int(np.random.SeedSequence([int(cfg.seed) & 0xFFFFFFFF, j]).generate_state(1)[0])
        for j in range(1, DIRICHLET_RESEEDS)
    ]
    for seed in seeds:
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="product_type",
            alpha=float(cfg.alpha),
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
        partitioner.dataset = ds
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            try:
                return _read(partitioner, num_clients)
            except ValueError as exc:
                if "max number of attempts" not in str(exc):
                    raise ConfigError(f"Dirichlet partitioning failed: {exc}") from exc
    counts = Counter(types)
    raise ConfigError(
        f"Dirichlet partitioning with alpha={cfg.alpha} could not give each of "
        f"{num_clients} clients at least {min_size} sample(s) in {DIRICHLET_RESEEDS * 11} "
        f"draws ({len(types)} samples, {len(counts)} product types): some client always "
        f"came out (nearly) empty. Fix: {_FIX['dirichlet']}"
    )


def _iid(types: list[str], num_clients: int, seed: int) -> list[list[int]]:
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(int(seed)).permutation(len(types))
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = _local_dataset(types, order)
    return _read(partitioner, num_clients)


def _pathological(types: list[str], num_clients: int, seed: int, min_size: int) -> list[list[int]]:
    from flwr_datasets.partitioner import PathologicalPartitioner

    counts = Counter(types)
    unique = sorted(counts)
    if num_clients < len(unique):
        raise ConfigError(
            f"partition.method='pathological' gives each client one product type, but there "
            f"are {len(unique)} types ({', '.join(unique)}) and only {num_clients} clients, so "
            f"types {', '.join(unique[num_clients:])} would be unused. Fix: raise num_clients "
            f"to at least {len(unique)}, select fewer dataset.categories, or use "
            f"partition.method='dirichlet' with a small alpha"
        )
    # Client i gets unique[i % T]; a type shared by k clients is cut into k near-equal chunks.
    for t_idx, name in enumerate(unique):
        sharing = list(range(t_idx, num_clients, len(unique)))
        smallest = counts[name] // len(sharing)
        if smallest < min_size:
            raise ConfigError(
                f"pathological partitioning: clients {sharing} share product type {name!r} "
                f"({counts[name]} samples), so client {sharing[-1]} would get only "
                f"{smallest} sample(s) (< {min_size}). Fix: {_FIX['pathological']}"
            )
    order = np.random.default_rng(int(seed)).permutation(len(types))
    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="product_type",
        num_classes_per_partition=1,
        class_assignment_mode="deterministic",
        shuffle=True,
        seed=int(seed),
    )
    partitioner.dataset = _local_dataset(types, order)
    try:
        return _read(partitioner, num_clients)
    except ValueError as exc:  # pragma: no cover - pre-checked above
        raise ConfigError(
            f"pathological partitioning failed: {exc}. Fix: {_FIX['pathological']}"
        ) from exc


def _check_cover(parts: list[list[int]], n: int) -> None:
    """Every index in ``range(n)`` exactly once (guards against partitioner changes)."""
    flat = [i for p in parts for i in p]
    if len(flat) != n or sorted(flat) != list(range(n)):
        raise RuntimeError(
            f"partitioner bug: {len(flat)} indices assigned for {n} samples "
            f"({len(set(flat))} distinct)"
        )


def _check_sizes(parts: list[list[int]], method: str, min_size: int) -> None:
    """Refuse clients with fewer than ``min_size`` samples, naming them."""
    small = [(c, len(p)) for c, p in enumerate(parts) if len(p) < min_size]
    if small:
        which = ", ".join(f"client {c} has {k}" for c, k in small)
        raise ConfigError(
            f"{method} partitioning left clients below the minimum of {min_size} "
            f"sample(s): {which}. Fix: {_FIX[method]}"
        )
