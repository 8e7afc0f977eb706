"""The engine's helper for benchmarks that pick a round: keep both sides' states after a
round, restore them later and score again, equal to what the round itself scored."""

from __future__ import annotations

from pathlib import Path

import tests.toy_trainable  # noqa: F401  (registers the toy detector)
from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig
from fedad.federation.in_process import InProcess, evaluate_round, keep_round, restore_round
from fedad.federation.server import Server
from partitions import partition_nodes


def test_a_kept_round_restored_scores_as_it_did(tmp_path: Path):
    cfg = RunConfig(detector="toyae", exchange="fedavg", plugins=["tests.toy_trainable"],
                    num_clients=2, examples=0)
    cfg = from_flat({**to_flat(cfg), "train.rounds": 3, "partition.min_samples": 1,
                     "dataset.texture_train_per_type": 6,
                     "dataset.texture_test_normal_per_type": 2,
                     "dataset.texture_test_anomalous_per_type": 2, "dataset.image_size": 64,
                     "train.local_epochs": 3, "sections": {"toyae": {"lr": 0.01}}})
    transport = InProcess(cfg, partition_nodes(cfg))
    server = Server(cfg, transport.keys)
    kept, scored = {}, {}

    def on_round(record: dict) -> None:
        kept[record["round"]] = keep_round(server, transport, record["round"])
        scored[record["round"]] = record["evaluate"]["per_client"]

    server.run(transport, {}, on_round)
    assert scored[1] != scored[3]  # training moved the scores
    restore_round(server, transport, kept[1])
    again = evaluate_round(server, transport, 1)["per_client"]
    assert {k: v["i_auroc"] for k, v in again.items()} == {
        k: v["i_auroc"] for k, v in scored[1].items()}
