"""The server engine's handling of replies (fedad/federation/server.py, no Flower):
aggregation, misbehaving clients, evaluation, and what every exchange sends."""

from __future__ import annotations

import numpy as np
import pytest

from fedad.config.schema import RunConfig
from fedad.detectors.base import BANK
from fedad.exchanges.scaffold import CONTROL, CONTROL_DELTA, ScaffoldExchange
from fedad.exchanges.summary import SUMMARY
from fedad.exchanges.weights import WEIGHTS
from fedad.federation.records import Reply
from fedad.federation.server import Delivery, Server

H, W, C = 3, 3, 176  # Lite0 levels 1-3 at 12 px: what the server expects


def reply(key: int, bank: np.ndarray | None = None, error: str | None = None,
          metrics: dict | None = None, records: dict | None = None) -> Reply:
    if error is not None:
        return Reply(key=key, error=error)
    recs = dict(records or {})
    if bank is not None:
        recs[SUMMARY] = {BANK: bank}
    return Reply(key=key, records=recs, metrics=metrics or {
        "loss": 0.5, "seconds-features": 1.0, "seconds-train": 2.0, "seconds-reduce": 0.1})


def delivery(*replies: Reply, missing: tuple[int, ...] = ()) -> Delivery:
    return Delivery(replies=list(replies), missing=list(missing))


def good(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(H, W, C)).astype(np.float32)


def strategy() -> Server:
    cfg = RunConfig()
    cfg.dataset.image_size = 12
    cfg.train.rounds = 3
    cfg.eval_every = 2
    return Server(cfg, keys=[1, 2, 3, 4, 5, 6])


def test_misbehaving_clients_are_left_out_and_named():
    s = strategy()
    nan = good(9)
    nan[0, 0, 0] = np.nan
    summary = s.accept(0, delivery(reply(1, good(1)), reply(2, good(2)),
                                   reply(3, error="CUDA out of memory"), reply(4, nan),
                                   reply(5, good(5)[:2]), reply(6, None), missing=(7,)))
    bank = s.exchange.global_summary()[BANK]
    assert bank.shape == (H, W, C) and np.isfinite(bank).all()
    assert summary["clients"] == 2
    text = "\n".join(s.rejected)
    assert "node 3" in text and "CUDA out of memory" in text
    assert "node 4" in text and "non-finite" in text
    assert "node 5" in text and "(2, 3, 176)" in text
    assert "node 6" in text and "summary" in text
    assert "node 7" in text and "timeout" in text
    # Every round holds banks to the run's feature geometry.
    summary = s.accept(1, delivery(reply(1, good(3)), reply(2, good(4)[:, :2])))
    assert summary["clients"] == 1 and "node 2" in s.rejected[-1]


def test_no_valid_bank_is_an_error_that_says_why():
    s = strategy()
    with pytest.raises(RuntimeError, match="fewer than min_clients=1.*disk full"):
        s.accept(0, delivery(reply(1, error="disk full")))


def test_kmeans_of_identical_banks_returns_their_features():
    s = strategy()
    b = good(0)
    s.accept(0, delivery(reply(1, b), reply(2, b)))
    centres = s.exchange.global_summary()[BANK].reshape(-1, C)
    d = np.linalg.norm(b.reshape(-1, 1, C) - centres[None], axis=-1).min(axis=1)
    assert d.max() < 1e-4  # every feature is (up to float error) a centre


def test_evaluation_mean_std_over_clients():
    s = strategy()
    replies = [reply(n, metrics={"i_auroc": v, "p_auroc": 0.9, "pro": 0.5, "partition-id": n,
                                 "seconds-eval": 1.0, "seconds-features": 0.5})
               for n, v in ((1, 0.8), (2, 0.6))]
    out = s.evaluation(2, delivery(*replies, reply(3, error="boom")))
    assert out["i_auroc"]["mean"] == pytest.approx(0.7)
    assert out["i_auroc"]["std"] == pytest.approx(0.1)
    assert set(out["per_client"]) == {"1", "2"}
    assert out["seconds-client-sum"] == {"seconds-eval": 2.0, "seconds-features": 1.0}
    assert "node 3" in s.rejected[-1] and "boom" in s.rejected[-1]


def toy_weights(s: Server) -> None:
    """A global model of one (2, 2) tensor (what start() takes from the module)."""
    s.exchange.weights = {"w": np.zeros((2, 2), np.float32)}
    s.exchange.reference = {"w": (2, 2)}
    if isinstance(s.exchange, ScaffoldExchange):
        s.exchange.control = {"w": np.zeros((2, 2), np.float32)}


def weight_reply(key: int, value: float, n: int, dc: np.ndarray | None = None,
                 control: bool = False) -> Reply:
    """Weights of one value (and, with ``control``, SCAFFOLD's delta c of the same)."""
    records = {WEIGHTS: {"w": np.full((2, 2), value, np.float32)}}
    if control:
        records[CONTROL_DELTA] = {"w": np.full((2, 2), value, np.float32) if dc is None
                                  else dc}
    return reply(key, records=records, metrics={
        "num-examples": n, "loss": 0.1, "seconds-features": 0.0, "seconds-train": 0.0,
        "seconds-reduce": 0.0})


def test_fedavg_is_the_example_weighted_mean_and_drops_bad_clients():
    s = Server(RunConfig(method="fedavg"), keys=[1, 2, 3])
    toy_weights(s)
    bad = weight_reply(3, 0.0, 5)
    bad.records[WEIGHTS] = {"w": np.full((2, 2), np.nan, np.float32)}
    summary = s.accept(1, delivery(weight_reply(1, 1.0, 1), weight_reply(2, 5.0, 3), bad))
    assert np.allclose(s.exchange.weights["w"], 0.25 * 1.0 + 0.75 * 5.0)  # 1 and 3 examples
    assert summary["clients"] == 2 and "node 3" in s.rejected[-1]


@pytest.mark.parametrize("method", ["fedavg", "scaffold"])
def test_weight_uploads_of_the_wrong_keys_shape_or_dtype_are_left_out(method: str):
    """A client sending weights that do not fit the global model (other keys, another
    shape, integers, NaN; or, for SCAFFOLD, a malformed control-variate delta) is left out
    with the round and the reason; the others are aggregated and every rejection is
    counted against its client."""
    s = Server(RunConfig(method=method), keys=list(range(1, 7)))
    toy_weights(s)

    def upload(key: int, w: np.ndarray, dc: np.ndarray | None = None) -> Reply:
        r = weight_reply(key, 0.0, 1, dc=np.zeros((2, 2), np.float32) if dc is None else dc,
                         control=method == "scaffold")
        r.records[WEIGHTS] = {"w": w}
        return r

    ok = np.full((2, 2), 2.0, np.float32)
    replies = [upload(1, ok), upload(2, np.ones((3, 2), np.float32)),
               upload(3, np.ones((2, 2), np.int64)), upload(4, ok * np.nan)]
    wrong_key = upload(5, ok)
    wrong_key.records[WEIGHTS] = {"v": ok}
    replies.append(wrong_key)
    if method == "scaffold":
        replies.append(upload(6, ok, dc=np.ones(3, np.float32)))
    summary = s.accept(4, delivery(*replies))
    assert summary["clients"] == 1
    assert np.isfinite(s.exchange.weights["w"]).all()
    text = "\n".join(s.rejected)
    assert all(line.startswith("round 4, client node ") for line in s.rejected)
    assert "node 2" in text and "shape (3, 2), expected (2, 2)" in text
    assert "node 3" in text and "dtype int64" in text
    assert "node 4" in text and "non-finite" in text
    assert "node 5" in text and "missing ['w'], unexpected ['v']" in text
    if method == "scaffold":
        assert "node 6" in text and f"'{CONTROL_DELTA}[w]' has shape (3,)" in text
    assert sum(s.rejected_per_client.values()) == len(s.rejected) == len(replies) - 1


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedbn", "scaffold", "local"])
def test_every_exchange_addresses_its_own_sites_only(method: str):
    """A round goes to the sites the server was given (Flower's FedAvg.configure_train
    would sample from every node the grid knows), with what the exchange sends."""
    cfg = RunConfig(method=method)
    cfg.head.batch_norm = method == "fedbn"
    cfg.dataset.image_size = 12
    s = Server(cfg, keys=[2, 5])
    s.exchange.start()
    envs = s.train_envelopes(1, {"out": ""})
    assert sorted(envs) == [2, 5] and envs[2].config["round"] == 1
    records = envs[2].records
    assert ("fedprox" in records) == (method == "fedprox")
    assert (CONTROL in records) == (method == "scaffold")
    assert (WEIGHTS in records) == (method != "local")
    if method == "fedprox":
        assert float(records["fedprox"]["mu"][0]) == cfg.train.proximal_mu
