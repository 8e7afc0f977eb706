"""The FedDyMem strategy's handling of replies: aggregation, and misbehaving clients."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from fedad.config import RunConfig
from fedad.payload import BANK, METRICS
from server.bank import BankStrategy

H, W, C = 3, 3, 176  # Lite0 levels 1-3 at 12 px: what the server expects


def reply(node: int, bank: np.ndarray | None = None, error: str | None = None,
          metrics: dict | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id=f"i{node}", group_id="", created_at=time.time(),
                    ttl=60.0, message_type="train")
    if error is not None:
        return Message(metadata=meta, error=Error(code=0, reason=error))
    content = RecordDict({METRICS: MetricRecord(metrics or {
        "loss": 0.5, "seconds-features": 1.0, "seconds-train": 2.0, "seconds-reduce": 0.1})})
    if bank is not None:
        content[BANK] = ArrayRecord({BANK: Array(bank)})
    return Message(metadata=meta, content=content)


def good(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(H, W, C)).astype(np.float32)


def strategy() -> BankStrategy:
    cfg = RunConfig()
    cfg.dataset.image_size = 12
    cfg.train.rounds = 3
    cfg.eval_every = 2
    return BankStrategy(cfg, node_ids=[1, 2, 3, 4, 5, 6])


def test_misbehaving_clients_are_left_out_and_named():
    s = strategy()
    nan = good(9)
    nan[0, 0, 0] = np.nan
    replies = [reply(1, good(1)), reply(2, good(2)), reply(3, error="CUDA out of memory"),
               reply(4, nan), reply(5, good(5)[:2]), reply(6, None)]
    record, summary = s.aggregate_train(0, replies)
    bank = record[BANK].numpy()
    assert bank.shape == (H, W, C) and np.isfinite(bank).all()
    assert summary["clients"] == 2
    text = "\n".join(s.rejected)
    assert "node 3" in text and "CUDA out of memory" in text
    assert "node 4" in text and "non-finite" in text
    assert "node 5" in text and "(2, 3, 176)" in text
    assert "node 6" in text and "bank" in text
    # Every round holds banks to the run's feature geometry.
    _, summary = s.aggregate_train(1, [reply(1, good(3)), reply(2, good(4)[:, :2])])
    assert summary["clients"] == 1 and "node 2" in s.rejected[-1]


def test_no_valid_bank_is_an_error_that_says_why():
    s = strategy()
    with pytest.raises(RuntimeError, match="fewer than min_clients=1.*disk full"):
        s.aggregate_train(0, [reply(1, error="disk full")])


def test_kmeans_of_identical_banks_returns_their_features():
    s = strategy()
    b = good(0)
    record, _ = s.aggregate_train(0, [reply(1, b), reply(2, b)])
    centres = record[BANK].numpy().reshape(-1, C)
    d = np.linalg.norm(b.reshape(-1, 1, C) - centres[None], axis=-1).min(axis=1)
    assert d.max() < 1e-4  # every feature is (up to float error) a centre


def test_evaluation_mean_std_over_clients_and_schedule():
    s = strategy()
    replies = [reply(n, metrics={"i_auroc": v, "p_auroc": 0.9, "pro": 0.5, "partition-id": n,
                                 "seconds-eval": 1.0, "seconds-features": 0.5})
               for n, v in ((1, 0.8), (2, 0.6))]
    out = s.aggregate_evaluate(2, replies + [reply(3, error="boom")])
    assert out["i_auroc"]["mean"] == pytest.approx(0.7)
    assert out["i_auroc"]["std"] == pytest.approx(0.1)
    assert set(out["per_client"]) == {"1", "2"}
    assert out["seconds-client-sum"] == {"seconds-eval": 2.0, "seconds-features": 1.0}
    assert s.configure_evaluate(1, ArrayRecord(), None, None) == []  # eval_every=2


def weight_reply(node: int, value: float, n: int) -> Message:
    msg = reply(node, metrics={"num-examples": n, "loss": 0.1, "seconds-features": 0.0,
                               "seconds-train": 0.0, "seconds-reduce": 0.0})
    msg.content["arrays"] = ArrayRecord({"w": Array(np.full((2, 2), value, np.float32))})
    return msg


def test_fedavg_is_the_example_weighted_mean_and_drops_bad_clients():
    from server.baselines import WeightStrategy

    cfg = RunConfig(method="fedavg")
    s = WeightStrategy(cfg, node_ids=[1, 2, 3])
    bad = weight_reply(3, 0.0, 5)
    bad.content["arrays"] = ArrayRecord({"w": Array(np.full((2, 2), np.nan, np.float32))})
    arrays, summary = s.aggregate_train(1, [weight_reply(1, 1.0, 1), weight_reply(2, 5.0, 3),
                                            bad])
    assert np.allclose(arrays["w"].numpy(), 0.25 * 1.0 + 0.75 * 5.0)  # 1 and 3 examples
    assert summary["clients"] == 2 and "node 3" in s.rejected[-1]


@pytest.mark.parametrize("method", ["fedavg", "scaffold"])
def test_weight_uploads_of_the_wrong_keys_shape_or_dtype_are_left_out(method: str):
    """A client sending weights that do not fit the global model (other keys, another
    shape, integers, NaN; or, for SCAFFOLD, a malformed control-variate delta) is left out
    with the round and the reason; the others are aggregated and every rejection is
    counted against its client."""
    import torch

    from fedad.payload import CV_DELTA
    from server.baselines import WeightStrategy

    s = WeightStrategy(RunConfig(method=method), node_ids=list(range(1, 7)))
    s.reference["arrays"] = {"w": (2, 2)}  # what start() takes from the global model
    s.c_global = {"w": torch.zeros(2, 2)}
    s._x = {"w": torch.zeros(2, 2)}

    def upload(node: int, w: np.ndarray, dc: np.ndarray | None = None) -> Message:
        msg = weight_reply(node, 0.0, 1)
        msg.content.array_records["arrays"] = ArrayRecord({"w": Array(w)})
        if method == "scaffold":
            msg.content.array_records[CV_DELTA] = ArrayRecord(
                {"w": Array(np.zeros((2, 2), np.float32) if dc is None else dc)})
        return msg

    ok = np.full((2, 2), 2.0, np.float32)
    replies = [upload(1, ok), upload(2, np.ones((3, 2), np.float32)),
               upload(3, np.ones((2, 2), np.int64)), upload(4, ok * np.nan)]
    wrong_key = upload(5, ok)
    wrong_key.content.array_records["arrays"] = ArrayRecord({"v": Array(ok)})
    replies.append(wrong_key)
    if method == "scaffold":
        replies.append(upload(6, ok, dc=np.ones(3, np.float32)))
    arrays, summary = s.aggregate_train(4, replies)
    assert summary["clients"] == 1
    assert np.isfinite(arrays["w"].numpy()).all()
    text = "\n".join(s.rejected)
    assert all(line.startswith("round 4, client node ") for line in s.rejected)
    assert "node 2" in text and "shape (3, 2), expected (2, 2)" in text
    assert "node 3" in text and "dtype int64" in text
    assert "node 4" in text and "non-finite" in text
    assert "node 5" in text and "missing ['w'], unexpected ['v']" in text
    if method == "scaffold":
        assert "node 6" in text and f"'{CV_DELTA}[w]' has shape (3,)" in text
    assert sum(s.rejected_per_client.values()) == len(s.rejected) == len(replies) - 1


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedbn", "scaffold", "local"])
def test_weight_exchange_addresses_its_own_nodes_only(method: str, monkeypatch):
    """A weight strategy sends its round to the nodes it was given, not to every node the
    grid knows (Flower's FedAvg.configure_train samples from all connected nodes: a
    SuperLink shared with another federation, or extra SuperNodes, would get its model)."""
    from flwr.app import ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from server.baselines import WeightStrategy

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp process has
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)

    class Grid:
        def get_node_ids(self):
            return list(range(1, 9))

    cfg = RunConfig(method=method)
    cfg.head.batch_norm = method == "fedbn"
    s = WeightStrategy(cfg, node_ids=[2, 5])
    arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})
    msgs = list(s.configure_train(1, arrays, ConfigRecord({"out": ""}), Grid()))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [2, 5]
    conf = msgs[0].content["config"]
    assert int(conf["server-round"]) == 1
    assert ("proximal-mu" in conf) == (method == "fedprox")
    assert ("arrays" in msgs[0].content) == (method != "local")
