"""Partial participation (``train.participation``): which sites train in a round."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.toy_trainable  # noqa: F401  (registers the toy detector)
from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.federation.compose import check
from fedad.federation.in_process import InProcess
from fedad.federation.participation import participants
from fedad.federation.run import federate
from partitions import partition_nodes


def test_participants_are_seeded_per_round_and_never_fewer_than_needed():
    keys = list(range(10, 30))
    a = participants(keys, 0.3, seed=0, round_t=1)
    assert a == participants(keys, 0.3, seed=0, round_t=1)  # a resumed run draws the same
    assert a != participants(keys, 0.3, seed=0, round_t=2)
    assert set(a) <= set(keys) and a == sorted(a)
    sizes = [len(participants(keys, 0.3, 0, r)) for r in range(1, 200)]
    assert 0.2 < sum(sizes) / (len(sizes) * len(keys)) < 0.4  # about pi of the sites
    assert all(len(participants(keys, 0.01, 0, r, at_least=3)) >= 3 for r in range(1, 50))
    assert participants(keys, 1.0, 0, 5) == keys
    with pytest.raises(ValueError, match="participation"):
        participants(keys, 0.0, 0, 1)
    cfg = RunConfig()
    cfg.train.participation = 1.5
    with pytest.raises(ConfigError, match="participation"):
        check(cfg)


def test_only_the_drawn_sites_train_and_every_site_is_scored(tmp_path: Path):
    cfg = RunConfig(detector="toyae", exchange="local", num_clients=4, examples=0,
                    plugins=["tests.toy_trainable"])
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 4, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 32
    cfg.train.rounds, cfg.train.participation, cfg.eval_every = 4, 0.5, 10**9
    transport = InProcess(cfg, partition_nodes(cfg))
    server = federate(cfg, transport, transport.keys, tmp_path / "run")
    rounds = server.history
    for r in rounds:
        asked = r["train"]["participants"]
        assert 1 <= len(asked) < 4 and r["train"]["clients"] == len(asked)
        assert asked == [server.name(k) for k in participants(
            sorted(transport.keys), 0.5, cfg.train.seed, r["round"])]
    assert len({tuple(r["train"]["participants"]) for r in rounds}) > 1
    assert set(rounds[-1]["evaluate"]["per_client"]) == {"0", "1", "2", "3"}  # all scored
