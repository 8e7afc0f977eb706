"""Robust aggregation, min_clients and fault injection, on tiny tensors (no Flower runtime;
tests/test_reliability.py runs the faults through Flower)."""

from __future__ import annotations

import numpy as np
import pytest

from fedad.config.schema import RunConfig
from fedad.detectors.base import BANK
from fedad.errors import ConfigError
from fedad.exchanges.summary import SUMMARY
from fedad.federation.faults import active, corrupt, inject, parse_faults
from fedad.federation.robust import median_outliers
from fedad.federation.server import Server, short_reason
from tests.test_server import C, delivery, good, reply, strategy, toy_weights, weight_reply


def test_median_outliers_drop_the_far_vector_only():
    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=8) * 0.1 for _ in range(5)] + [np.full(8, 10.0)]
    v = median_outliers(vecs, k=3.0, spread=0.5)
    assert v.keep.tolist() == [True] * 5 + [False]
    assert v.distances[5] > v.threshold > v.distances[:5].max()
    assert "exceeds the threshold" in v.reason(5)


def test_median_outliers_keep_near_identical_clients_and_small_federations():
    base = np.ones(4)
    # MAD is ~0 here: the spread floor (half the median vector's size) keeps a 1%
    # difference from counting as an outlier
    near = [base, base, base * 1.001, base * 1.01]
    assert median_outliers(near).keep.all()
    assert median_outliers([base, base * 100]).keep.all()  # < 3 uploads: nothing dropped
    with pytest.raises(ValueError, match="differ in length"):
        median_outliers([np.ones(3), np.ones(4), np.ones(3)])


def robust_strategy(nodes: int) -> Server:
    s = strategy()
    s.cfg.robust.enabled = True
    s.keys = list(range(1, nodes + 1))
    return s


def test_a_shifted_bank_is_dropped_with_the_reason_and_kept_out_of_the_merge():
    s = robust_strategy(5)
    replies = [reply(n, good(n)) for n in range(1, 5)] + [reply(5, good(5) + 100.0)]
    summary = s.accept(1, delivery(*replies))
    assert summary["clients"] == 4
    assert np.abs(s.exchange.global_summary()[BANK]).max() < 20  # no shifted feature
    (entry,) = s.robust_log
    assert entry["dropped"] == ["client node 5"] and len(entry["distances"]) == 5
    assert s.rejected_per_client == {"client node 5": 1}
    assert "robust aggregation" in s.rejected[-1] and s.rejected[-1].startswith("round 1, ")
    # off: the same uploads all count
    off = strategy()
    off.keys = list(range(1, 6))
    summary = off.accept(1, delivery(*replies))
    assert summary["clients"] == 5 and not off.rejected


def test_robust_weight_exchange_drops_scaled_weights_then_trims():
    cfg = RunConfig(method="fedavg")
    cfg.robust.enabled = True
    s = Server(cfg, keys=[1, 2, 3, 4])
    toy_weights(s)  # the global model sent this round: zeros
    replies = [weight_reply(1, 1.0, 1), weight_reply(2, 1.1, 1), weight_reply(3, 0.9, 1),
               weight_reply(4, 100.0, 1)]
    summary = s.accept(1, delivery(*replies))
    assert summary["clients"] == 3
    assert np.allclose(s.exchange.weights["w"], 1.0, atol=1e-6)  # trimmed mean of 0.9, 1, 1.1
    assert s.robust_log[0]["dropped"] == ["client node 4"]


def test_fewer_valid_replies_than_min_clients_stops_the_run_naming_the_missing():
    s = strategy()
    s.cfg.min_clients = 2
    s.keys = [1, 2, 3]
    with pytest.raises(RuntimeError, match=r"1 valid replies, fewer than min_clients=2; "
                                           r"missing or rejected: client node 2, client node 3"
                                           r".*out of memory"):
        s.accept(1, delivery(reply(1, good(1)), reply(2, error="out of memory")))
    s.cfg.min_clients = 1
    summary = s.accept(2, delivery(reply(1, good(1)), reply(2, error="out of memory")))
    assert summary["clients"] == 1


def test_fault_specs_and_what_they_do_to_an_upload():
    assert [f.kind for f in parse_faults(["0:nan", "2:raise@2"])] == ["nan", "raise"]
    assert active(["0:nan", "2:raise@2", "2:shift"], 2, 2) == ["raise", "shift"]
    assert active(["2:raise@2"], 2, 1) == []
    for bad in ("nan", "0:explode", "x:nan@1"):
        with pytest.raises(ConfigError, match="faults"):
            parse_faults([bad])
    bank = good(0)
    assert np.isnan(corrupt(bank, "nan")).all()
    assert corrupt(bank, "shape").shape == (3, 3, C - 1)
    assert np.allclose(corrupt(bank, "shift"), bank + 100.0)
    assert np.allclose(corrupt(bank, "scale"), bank * 100.0)
    upload = {SUMMARY: {BANK: bank}}
    assert np.isnan(inject(upload, ["nan"])[SUMMARY][BANK]).all()
    assert inject(upload, [])[SUMMARY][BANK].tolist() == bank.tolist()
    assert np.isnan(bank).sum() == 0  # the upload it was given is left as it was


def test_error_replies_are_shortened_to_the_clients_message():
    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor"
           ".run()\n  File \"x.py\", line 1\nflwr.clientapp.client_app.ClientAppException: \n"
           "Exception ClientAppException occurred. Message: disk full on /data'>")
    assert short_reason(ray) == "disk full on /data"
    assert short_reason("plain reason") == "plain reason"
    assert len(short_reason("x" * 1000)) == 300
