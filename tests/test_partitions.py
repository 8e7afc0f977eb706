"""Tests of ``partitions``: splitting training samples over clients by product type.

Everything runs on in-memory ``datasets.Dataset.from_dict`` tables; nothing touches the hub.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from fedad.config.schema import PartitionConfig
from fedad.errors import ConfigError
from partitions import counts_table, partition_indices, plot_counts
from partitions.report import count_matrix
from partitions.split import VALID_METHODS

TYPES6 = [t for t in ("bottle", "cable", "carpet", "grid", "leather", "screw") for _ in range(100)]
# 761 samples over 7 unevenly sized types, interleaved (not sorted by type).
_SIZES7 = {
    "exp1": 120,
    "exp2": 110,
    "exp3": 100,
    "exp4": 130,
    "exp5": 101,
    "exp6": 100,
    "exp7": 100,
}
TYPES7 = [t for k in range(130) for t, n in _SIZES7.items() if k < n]


def _cfg(**kw) -> PartitionConfig:
    return PartitionConfig(**kw)


def _counts(types, parts) -> np.ndarray:
    return np.array(count_matrix(types, parts)[1], dtype=float)


def _client_dominance(types, parts) -> float:
    """Mean over clients of the largest product type's share of the client."""
    c = _counts(types, parts)
    return float((c.max(1) / c.sum(1)).mean())


def test_types7_fixture():
    assert len(TYPES7) == 761 and len(set(TYPES7)) == 7


# --- Dirichlet heterogeneity ------------------------------------------------------------------


def test_small_alpha_concentrates_types():
    doms = []
    for seed in range(10):
        parts = partition_indices(TYPES6, 5, _cfg(alpha=0.05, seed=seed))
        c = _counts(TYPES6, parts)
        # each product type sits mostly on one client ...
        assert (c.max(0) / c.sum(0)).mean() > 0.75, seed
        doms.append(_client_dominance(TYPES6, parts))
    # ... so clients are dominated by few types (6 types over 5 clients: by pigeonhole and
    # the min-size re-draws the mean largest share is ~0.7, not ~1).
    assert min(doms) > 0.45
    assert np.mean(doms) > 0.6


def test_small_alpha_more_clients_than_types_gives_one_type_clients():
    types = [t for t in ("a", "b", "c") for _ in range(200)]
    doms = [
        _client_dominance(types, partition_indices(types, 6, _cfg(alpha=0.05, seed=s)))
        for s in range(10)
    ]
    assert np.mean(doms) > 0.8


def test_large_alpha_near_uniform_type_mix():
    for seed in range(3):
        parts = partition_indices(TYPES6, 5, _cfg(alpha=1000.0, seed=seed))
        c = _counts(TYPES6, parts)
        shares = c / c.sum(1, keepdims=True)
        assert np.abs(shares - 1 / 6).max() < 0.1, seed
        assert _client_dominance(TYPES6, parts) < 0.25


def test_alpha_given_as_int_is_accepted():
    parts = partition_indices(TYPES6, 5, _cfg(alpha=1000, seed=0))
    assert parts == partition_indices(TYPES6, 5, _cfg(alpha=1000.0, seed=0))


def test_dirichlet_emits_no_retry_warnings():
    # 3 types x 40 over 5 clients at alpha 0.1 often needs re-draws inside flwr-datasets.
    types = [t for t in ("brick", "grass", "gravel") for _ in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(20):
            parts = partition_indices(types, 5, _cfg(alpha=0.1, seed=seed))
            assert min(len(p) for p in parts) >= 2


# --- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dirichlet", "iid", "pathological"])
def test_same_seed_same_partition(method):
    n = 10 if method == "pathological" else 5
    a = partition_indices(TYPES7, n, _cfg(method=method, seed=3))
    b = partition_indices(TYPES7, n, _cfg(method=method, seed=3))
    assert a == b


@pytest.mark.parametrize("method", ["dirichlet", "iid", "pathological"])
def test_different_seed_different_partition(method):
    # pathological: 10 clients over 7 types, so 3 types are shared and the seed decides
    # which samples of a shared type go to which client.
    n = 10 if method == "pathological" else 5
    a = partition_indices(TYPES7, n, _cfg(method=method, seed=0))
    b = partition_indices(TYPES7, n, _cfg(method=method, seed=1))
    assert a != b


# --- coverage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "num_clients", "alpha"),
    [
        ("dirichlet", 5, 0.1),
        ("dirichlet", 5, 1000.0),
        ("dirichlet", 1, 0.1),
        ("iid", 5, 0.1),
        ("iid", 7, 0.1),
        ("pathological", 7, 0.1),
        ("pathological", 12, 0.1),
    ],
)
def test_every_index_exactly_once(method, num_clients, alpha):
    parts = partition_indices(TYPES7, num_clients, _cfg(method=method, alpha=alpha, seed=5))
    assert len(parts) == num_clients
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(len(TYPES7)))
    assert all(p == sorted(p) for p in parts)
    assert all(isinstance(i, int) for i in flat)
    assert min(len(p) for p in parts) >= 2


# --- iid / pathological -----------------------------------------------------------------------


def test_iid_near_equal_sizes_and_mixed_types():
    types_sorted = sorted(TYPES7)  # a type-sorted list: unshuffled shards would be one-type
    parts = partition_indices(types_sorted, 5, _cfg(method="iid", seed=0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 761
    c = _counts(types_sorted, parts)
    assert (c > 0).all()  # every client sees every type
    assert _client_dominance(types_sorted, parts) < 0.3


def test_pathological_one_type_per_client():
    types = sorted(_SIZES7)
    parts = partition_indices(TYPES7, 7, _cfg(method="pathological"))
    for client, part in enumerate(parts):
        assert {TYPES7[i] for i in part} == {types[client]}
        assert len(part) == _SIZES7[types[client]]


def test_pathological_shared_types_split_evenly():
    types = sorted(_SIZES7)
    parts = partition_indices(TYPES7, 10, _cfg(method="pathological"))
    for client, part in enumerate(parts):
        assert {TYPES7[i] for i in part} == {types[client % 7]}
    # exp1 (120) shared by clients 0 and 7; exp4 (130) by clients 3 alone
    assert sorted([len(parts[0]), len(parts[7])]) == [60, 60]
    assert sorted([len(parts[1]), len(parts[8])]) == [55, 55]
    assert len(parts[3]) == 130


def test_pathological_fewer_clients_than_types_refused():
    with pytest.raises(ConfigError, match=r"num_clients.*at least 7"):
        partition_indices(TYPES7, 5, _cfg(method="pathological"))


def test_pathological_too_small_shared_type_names_client():
    types = ["a"] * 10 + ["b"] * 3
    # clients 1 and 3 share "b" (3 samples): client 3 would get 1 < 2.
    with pytest.raises(ConfigError, match=r"client 3") as err:
        partition_indices(types, 4, _cfg(method="pathological", min_samples=2))
    assert "lower num_clients" in str(err.value)
    assert "min_samples" in str(err.value)
    # with min_samples=1 it is fine
    parts = partition_indices(types, 4, _cfg(method="pathological", min_samples=1))
    assert [len(p) for p in parts] == [5, 2, 5, 1]


# --- refused configurations -------------------------------------------------------------------


@pytest.mark.parametrize("method", VALID_METHODS)
def test_fewer_samples_than_clients_refused(method):
    with pytest.raises(ConfigError, match=r"lower num_clients") as err:
        partition_indices(["a", "b", "c"], 5, _cfg(method=method, min_samples=0))
    assert "min_samples" in str(err.value)


def test_impossible_min_samples_refused():
    with pytest.raises(ConfigError, match=r"at least 200 sample.*num_clients \(to at most 3\)"):
        partition_indices(TYPES6, 5, _cfg(min_samples=200))
    with pytest.raises(ConfigError) as err:  # one image: no client count can work
        partition_indices(["a"], 5, _cfg(min_samples=2))
    assert "at most 0" not in str(err.value)
    assert str(err.value).endswith("use at least 10 training images")


def test_dirichlet_unreachable_min_size_names_fix():
    # 2 types, tiny alpha: each type lands on ~1 client, the other 3 clients stay empty.
    types = ["a"] * 50 + ["b"] * 50
    with pytest.raises(ConfigError) as err:
        partition_indices(types, 5, _cfg(alpha=0.001, min_samples=0))
    msg = str(err.value)
    assert "raise partition.alpha" in msg
    assert "lower num_clients" in msg
    assert "min_samples" in msg
    # a larger alpha makes it feasible
    parts = partition_indices(types, 5, _cfg(alpha=1.0, min_samples=0))
    assert min(len(p) for p in parts) >= 1


def test_no_empty_clients_even_with_min_samples_zero():
    types = ["a"] * 50 + ["b"] * 50
    for seed in range(5):
        parts = partition_indices(types, 5, _cfg(alpha=0.3, min_samples=0, seed=seed))
        assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize(
    ("kwargs", "num_clients", "pattern"),
    [
        ({}, 0, r"num_clients must be an integer >= 1"),
        ({}, -2, r"num_clients"),
        ({"alpha": 0.0}, 5, r"partition\.alpha must be .* > 0"),
        ({"alpha": -1.0}, 5, r"partition\.alpha"),
        ({"alpha": float("nan")}, 5, r"partition\.alpha"),
        ({"min_samples": -1}, 5, r"partition\.min_samples"),
        ({"method": "shards"}, 5, r"'shards' is unknown; valid methods: dirichlet, iid, patho"),
    ],
)
def test_invalid_config_refused(kwargs, num_clients, pattern):
    with pytest.raises(ConfigError, match=pattern):
        partition_indices(TYPES6, num_clients, _cfg(**kwargs))


def test_empty_dataset_refused():
    with pytest.raises(ConfigError, match=r"0 training sample\(s\)"):
        partition_indices([], 2, _cfg())


# --- report -----------------------------------------------------------------------------------


def test_counts_table_rows_columns_totals():
    parts = partition_indices(TYPES7, 5, _cfg(seed=0))
    table = counts_table(TYPES7, parts)
    lines = table.splitlines()
    header = lines[0].split()
    assert header == ["client", *sorted(_SIZES7), "total"]
    rows = {}
    for line in lines:
        m = re.match(r"^(client \d+|total)\s+([\d\s]+)$", line)
        if m:
            rows[m.group(1)] = [int(v) for v in m.group(2).split()]
    assert set(rows) == {f"client {c}" for c in range(5)} | {"total"}
    for c in range(5):
        row = rows[f"client {c}"]
        assert row[-1] == len(parts[c]) == sum(row[:-1])
        for j, t in enumerate(sorted(_SIZES7)):
            assert row[j] == sum(TYPES7[i] == t for i in parts[c])
    assert rows["total"] == [*(_SIZES7[t] for t in sorted(_SIZES7)), 761]


def test_counts_table_rejects_bad_index():
    with pytest.raises(IndexError, match="client 1"):
        counts_table(["a", "b"], [[0], [5]])


def test_plot_counts_writes_png(tmp_path):
    parts = partition_indices(TYPES7, 5, _cfg(seed=0))
    out = plot_counts(TYPES7, parts, tmp_path / "sub" / "fig5.png", title="Dirichlet 0.1")
    assert out == tmp_path / "sub" / "fig5.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
