"""Secure aggregation of sums: the encoding against Flower's own quantiser, the sum terms of
PaDiM and of the weighted mean, the config checks, and SecAgg+ through Flower's simulation
runtime with a site dropping out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from fedad.components.gaussian import pack_upper
from fedad.components.states import weighted_mean
from fedad.config.schema import RunConfig, SecureConfig
from fedad.detectors.base import FeatureShape
from fedad.detectors.padim.config import PaDiMConfig
from fedad.detectors.padim.detector import PaDiM
from fedad.detectors.registry import create, exchange_for, feature_shape
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.federation.compose import check
from fedad.federation.records import arrays, tensors
from fedad.privacy.secure_sum import decode, encode, error_bound, quantization_range

SHAPE = FeatureShape(8, 4, 4)  # channels, height, width


def stats_sums(stats) -> dict[str, np.ndarray]:
    n, mean = float(stats["count"][0]), np.asarray(stats["mean"], dtype=np.float64)
    return {"first": n * mean,
            "second": np.asarray(stats["scatter"], dtype=np.float64)
            + n * pack_upper(mean[:, :, None] * mean[:, None, :])}


def test_quantisation_levels_leave_room_for_the_sum_in_32_bit_masks():
    assert quantization_range(SecureConfig(), 3) == 2 ** 30
    assert quantization_range(SecureConfig(), 5) == 2 ** 29
    assert quantization_range(SecureConfig(quantization_bits=22), 5) == 2 ** 22
    with pytest.raises(ConfigError, match="quantization_bits=31"):
        quantization_range(SecureConfig(quantization_bits=31), 5)


def test_encoded_terms_summed_by_flowers_quantiser_decode_within_the_stated_bound():
    """Each site's terms encoded, quantised as SecAgg+'s mod does, the integers summed and
    dequantised as its workflow does: the decoded sum is the true one up to the bound."""
    rng = np.random.default_rng(0)
    scales = {"count": 100.0, "first": 100.0 * 5.0}
    sites = [{"count": np.array([float(rng.integers(1, 100))]),
              "first": rng.uniform(-400, 400, size=(6, 3))} for _ in range(4)]
    c, levels = 8.0, 2 ** 12  # few levels: the error is large enough to see
    total = [np.zeros(1, dtype=np.int64), np.zeros((6, 3), dtype=np.int64)]
    for terms in sites:
        encoded, clipped = encode(terms, scales, c)
        assert clipped == 0
        for i, q in enumerate(quantize(list(encoded.values()), c, levels)):
            total[i] += q
    summed = [v - (len(sites) - 1) * c for v in dequantize(total, c, levels)]
    got = decode(dict(zip(scales, summed, strict=True)), scales, c)
    bound = error_bound(scales, len(sites), levels)
    for k in scales:
        true = sum(t[k] for t in sites)
        err = np.abs(got[k] - true).max()
        assert 0 < err <= bound[k], (k, err, bound[k])


def test_values_beyond_the_public_bound_are_counted():
    values = {"a": np.array([1.0, -30.0, 12.0])}
    assert encode(values, {"a": 10.0}, 8.0)[1] == 2  # -24 and 9.6 lie beyond 8
    assert encode(values, {"a": 100.0}, 8.0)[1] == 0
    with pytest.raises(ConfigError, match="do not match"):
        encode(values, {"b": 1.0}, 8.0)


def test_padim_statistics_from_summed_terms_equal_the_merged_statistics():
    cfg = RunConfig(padim=PaDiMConfig(channels=5))
    rng = torch.Generator().manual_seed(0)
    sites = [PaDiM(cfg, SHAPE, seed=i) for i in range(3)]
    uploads = []
    for i, site in enumerate(sites):
        site.fit(torch.randn(4 + i, 8, 4, 4, generator=rng) * (1 + i), None, 1)
        uploads.append(site.summarize(1))
    server = PaDiM(cfg, SHAPE)
    terms = [server.sum_terms(u) for u in uploads]
    assert set(terms[0]) == set(server.sum_scales(cfg.secure))
    summed = {k: sum(t[k] for t in terms) for k in terms[0]}
    secure = server.from_sums(summed)
    plain = server.merge(uploads, 1)
    assert int(secure["count"][0]) == int(plain["count"][0]) == 4 + 5 + 6
    np.testing.assert_allclose(secure["mean"], plain["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(secure["scatter"], plain["scatter"], rtol=1e-9, atol=1e-9)


def test_the_weighted_mean_from_summed_terms_is_fedavgs():
    cfg = RunConfig(detector="feddymem", exchange="fedavg")
    shape = feature_shape(cfg)
    server = exchange_for(cfg, create(cfg, shape))
    server.start()
    rng = np.random.default_rng(1)
    uploads = [Upload(i, i, {"weights": {k: rng.normal(size=v.shape).astype(v.dtype)
                                         for k, v in server.weights.items()}}, n)
               for i, n in enumerate([3, 7, 11])]
    terms = [server.sum_terms(u.records, u.num_examples) for u in uploads]
    assert list(terms[0]) == list(server.sum_scales(1))
    server.aggregate_sums({k: sum(t[k] for t in terms) for k in terms[0]}, 3, 1)
    want = arrays(weighted_mean([tensors(u.records["weights"]) for u in uploads],
                                [u.num_examples for u in uploads]))
    for k, v in want.items():
        np.testing.assert_allclose(server.weights[k], v, rtol=1e-5, atol=1e-6)


def test_secure_aggregation_is_refused_where_the_server_step_is_no_sum():
    with pytest.raises(ConfigError, match="not a sum"):
        check(RunConfig(detector="patchcore", secure=SecureConfig(enabled=True)))
    with pytest.raises(ConfigError, match="robust"):
        check(RunConfig(detector="padim", secure=SecureConfig(enabled=True),
                        robust=RunConfig().robust.__class__(enabled=True)))
    with pytest.raises(ConfigError, match="at least 2 sites"):
        check(RunConfig(detector="padim", num_clients=1, secure=SecureConfig(enabled=True)))
    check(RunConfig(detector="padim", secure=SecureConfig(enabled=True)))
    check(RunConfig(detector="feddymem", exchange="fedavg", secure=SecureConfig(enabled=True)))


def test_the_in_process_transport_says_secure_aggregation_needs_flower(tmp_path):
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = RunConfig(detector="padim", num_clients=2, secure=SecureConfig(enabled=True))
    cfg.padim.channels = 8
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 2, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 32
    transport = InProcess(cfg, partition_nodes(cfg))
    with pytest.raises(ConfigError, match="SecAgg"):
        federate(cfg, transport, transport.keys, tmp_path / "run")


@pytest.mark.slow
def test_secagg_plus_through_flower_with_a_site_dropping_out(tmp_path: Path):
    """Three PaDiM sites through Flower's simulation runtime with SecAgg+, partition 2
    failing in the masking stage (after it shared its keys): the server unmasks the sum of
    the two that stayed, which equals the plain sum of the same two uploads within the
    quantisation bound."""
    from fedad.cli.sim import launch, run_config_of
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes
    from tests.test_simulation import tiny_sim

    changes = {"detector": "padim", "padim.channels": 4, "examples": 0,  # full-rank scatter
               "faults": ["2:raise"]}
    assert launch(tiny_sim(**changes, **{"secure.enabled": True}), tmp_path / "secure") == 0
    (run,) = (tmp_path / "secure").glob("run-*")
    result = json.loads((run / "rounds.json").read_text())
    (train,) = [r["train"] for r in result["rounds"]]
    assert train["clients"] == 2 and train["secure"]["dropped"] and not train["secure"]["halted"]
    assert any("dropped out of secure aggregation" in r for r in result["rejected"])
    assert train["secure"]["clipped"] == 0
    secure = np.load(run / "global_summary.npz")

    cfg = run_config_of(tiny_sim(**changes))
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, tmp_path / "plain")
    plain = np.load(tmp_path / "plain" / "global_summary.npz")
    assert int(secure["count"][0]) == int(plain["count"][0])
    got, want = stats_sums(secure), stats_sums(plain)
    bound = train["secure"]["error_bound"]
    for k in ("first", "second"):
        err = float(np.abs(got[k] - want[k]).max())
        assert err <= bound[k] + 1e-9 * float(np.abs(want[k]).max()), (k, err, bound[k])
    # and the sites scored against it
    assert set(result["final"]["per_client"]) == {"0", "1", "2"}
    assert train["secure"]["messages"] == 4 and result["rounds"][0]["bytes"]["received"] > 0


def test_a_site_with_non_finite_terms_refuses_to_send_them():
    with pytest.raises(ValueError, match="non-finite values in the terms"):
        encode({"a": np.array([1.0, np.nan])}, {"a": 10.0}, 8.0)
