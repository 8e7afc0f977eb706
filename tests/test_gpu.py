"""fedad's GPU paths (marker ``gpu``), on the device ``$FEDAD_TEST_DEVICE`` names (default:
``cuda`` when PyTorch sees one; skipped otherwise): the backbone and every detector placed
on the device, the torch k-NN and Mahalanobis distances there equal to the CPU's within
float tolerance, the frozen detectors' metrics as on the CPU to 3 decimals, and a
checkpoint written on the device resumed on the CPU and back.

``benchmarks/gpu_check.py`` runs them on a GPU. On the CPU, ``FEDAD_TEST_DEVICE=cpu``
runs them all (the cross-device resume and the second trained detector skip: they repeat
CPU tests of the suite); the suite's run of the check (tests/test_gpu_check.py, ``--device
cpu --tiny``) selects the k-NN and Mahalanobis ones, for the suite's 10 minutes. fedad uses no mixed
precision (AMP): ``backbone.half`` stores features in float16 after a float32 forward
pass, which is what the half-precision test checks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedad.components.gaussian import inverse_covariance, squared_mahalanobis
from fedad.components.knn import NearestNeighbours, torch_knn
from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig
from fedad.federation.in_process import InProcess
from fedad.federation.run import federate, run_folder
from partitions import partition_nodes
from tests.test_asymst import Interrupted, KilledInRound
from tests.test_asymst import tiny as tiny_asymst

DEVICE = os.environ.get("FEDAD_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not DEVICE, reason="no CUDA device: set FEDAD_TEST_DEVICE=cpu "
                                                    "to run the GPU paths on the CPU")]
ON_CPU = DEVICE == "cpu"  # the reference runs are then the same runs: not repeated


@pytest.fixture(autouse=True)
def full_float32():
    """cuDNN convolutions in full float32 (PyTorch lets them use TF32 by default, ~1e-3
    relative): on a few tiny test images one swapped pair of scores moves an AUROC by
    1/64, so the comparisons with the CPU here are made without it (benchmarks/
    gpu_check.py measures the default)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def tiny(detector: str, **changes) -> RunConfig:
    """Two sites of tiny textures at 64 px, ``detector`` at a tiny size (the asymst and
    diffad settings of their own tests)."""
    if detector == "asymst":
        cfg = tiny_asymst()
    else:
        cfg = RunConfig(detector=detector, num_clients=2, examples=0)
        cfg.partition.min_samples = 1
        d = cfg.dataset
        d.texture_train_per_type, d.texture_test_normal_per_type = 6, 2
        d.texture_test_anomalous_per_type, d.image_size = 2, 64
        cfg.padim.channels = 16
        cfg.patchcore.upload_ratio, cfg.patchcore.global_ratio = 0.5, 0.25
        if detector == "feddymem":
            cfg.train.rounds = 2
        if detector == "diffad":
            cfg.exchange = "fedavg"
            cfg.ddpm.channels, cfg.ddpm.groups, cfg.ddpm.crop = [8, 16], 4, 16
            cfg.ddpm.steps, cfg.ddpm.ema, cfg.train.local_steps = 2, 0.0, 2
            cfg.diffad.size, cfg.diffad.head_stride = 0, 2
            cfg.train.batch_size = cfg.ddpm.batch_size = 4
            d.image_size = 32
    cfg.calibration.holdout, cfg.eval_every = 0, 10**9  # the last round is scored
    return from_flat({**to_flat(cfg), **changes})


def metrics(server) -> dict[str, float]:
    per = server.history[-1]["evaluate"]["per_client"]
    return {k: float(np.mean([v[k] for v in per.values()])) for k in ("i_auroc", "p_auroc")}


def run(cfg: RunConfig, folder: Path):
    return federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0, 1], folder)


def test_the_torch_knn_on_the_device_equals_faiss_on_the_cpu():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(3000, 48, generator=g), torch.randn(500, 48, generator=g)
    d_dev, i_dev = torch_knn(queries.to(DEVICE), bank.to(DEVICE), 3, chunk=128, bank_rows=700)
    assert d_dev.device.type == torch.device(DEVICE).type
    d_cpu, i_cpu = NearestNeighbours(bank, use_gpu=False).search(queries, 3)
    assert torch.allclose(d_dev.cpu(), d_cpu, rtol=1e-4, atol=1e-4)
    gap = (d_cpu[:, 1] - d_cpu[:, 0]) > 1e-3  # ties may be ordered either way
    assert torch.equal(i_dev.cpu()[gap, 0], i_cpu[gap, 0])


def test_mahalanobis_on_the_device_equals_float64_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 12, 12))
    cov = a @ a.transpose(0, 2, 1) / 12 + 0.1 * np.eye(12)
    mean = rng.normal(size=(6, 12))
    rows = rng.normal(size=(6, 20, 12))
    inv = inverse_covariance(cov, torch.float32, DEVICE)
    got = squared_mahalanobis(torch.from_numpy(rows).float().to(DEVICE), mean, inv)
    assert got.device.type == torch.device(DEVICE).type
    diff = rows - mean[:, None]
    want = np.einsum("pbi,pij,pbj->pb", diff, np.linalg.inv(cov), diff)
    assert np.allclose(got.cpu().numpy(), want, rtol=1e-3, atol=1e-3)


def test_backbone_features_on_the_device_equal_the_cpus_and_keep_in_half_precision():
    from fedad.features.extractor import build_feature_extractor

    cfg = RunConfig()
    extractor, _ = build_feature_extractor(cfg.backbone)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = extractor.eval()(x)
        dev = extractor.to(DEVICE)(x.to(DEVICE))
    assert dev.device.type == torch.device(DEVICE).type
    scale = float(ref.abs().max())
    assert float((dev.float().cpu() - ref).abs().max()) <= 1e-2 * scale
    # backbone.half keeps the features in float16 (a float32 forward pass, then stored)
    assert float((dev.half().float().cpu() - ref).abs().max()) <= 2e-2 * scale


@pytest.mark.parametrize("detector", ["padim", "patchcore"])
def test_frozen_detectors_on_the_device_score_as_on_the_cpu(detector: str, tmp_path: Path):
    got = metrics(run(tiny(detector, device=DEVICE), tmp_path / "device"))
    assert all(math.isfinite(v) for v in got.values())
    if not ON_CPU:
        want = metrics(run(tiny(detector, device="cpu"), tmp_path / "cpu"))
        assert got == pytest.approx(want, abs=5e-4), (got, want)


@pytest.mark.parametrize("detector", ["feddymem", "diffad"])  # asymst: the resume test
def test_trained_detectors_train_and_score_on_the_device(detector: str, tmp_path: Path):
    if ON_CPU and detector == "diffad":  # tests/test_diffad.py trains it on the CPU
        pytest.skip("the device is the CPU: one trained detector checks this test's path")
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    server = run(tiny(detector, device=DEVICE), tmp_path / "run")
    losses = [r["train"]["loss"].get("mean", 0.0) for r in server.history]
    assert all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(v) for v in metrics(server).values())
    if DEVICE.startswith("cuda"):  # the detector's tensors were on the GPU
        assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.parametrize("way", ["device-to-cpu", "cpu-to-device"])
def test_a_checkpoint_resumes_on_the_other_device(way: str, tmp_path: Path):
    """asymst killed before round 3 on one device resumes on the other (``device`` is an
    operational setting: a resumed run may change it) and finishes every round from the
    checkpoint's weights, optimiser and DDPM pool: the resumed round's loss is the one of a
    run never stopped on the first device (their float arithmetic differs in the last
    bits; random draws are made on the CPU). With the CPU as the device both ways are one
    and run once (exact resume on one device: tests/test_asymst.py)."""
    first, then = (DEVICE, "cpu") if way == "device-to-cpu" else ("cpu", DEVICE)
    if ON_CPU:  # the suite's time: exact resume on the CPU is tests/test_asymst.py's
        pytest.skip("the device is the CPU: tests/test_asymst.py resumes asymst there")
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = tiny("asymst", device=first)
    out = tmp_path / "killed"
    with pytest.raises(Interrupted):
        federate(cfg, KilledInRound(cfg, partition_nodes(cfg), 3), [0, 1], out)
    again = tiny("asymst", device=then, resume=str(out))
    folder, ckpt = run_folder(again, tmp_path, "x")
    resumed = federate(again, InProcess(again, partition_nodes(again)), [0, 1], folder, ckpt)
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    assert all(math.isfinite(v) for v in metrics(resumed).values())
    if DEVICE.startswith("cuda"):
        assert torch.cuda.max_memory_allocated() > 0
    if first != then:
        full = run(tiny("asymst", device=first), tmp_path / "full")
        assert resumed.history[-1]["train"]["loss"]["mean"] == pytest.approx(
            full.history[-1]["train"]["loss"]["mean"], rel=5e-2)
