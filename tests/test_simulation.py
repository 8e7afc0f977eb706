"""FedDyMem through Flower's real simulation runtime (SuperLink + Ray), no mocks of Flower."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedad.cli.flwr_run import FEDAD_LINE
from fedad.cli.sim import PROJECT, SimConfig, failure_of, launch, run_config_of
from fedad.errors import BadFilesError, ConfigError, DataError

TINY = dict(texture_train_per_type=6, texture_test_normal_per_type=2,
            texture_test_anomalous_per_type=2, image_size=64)


def tiny_sim(**changes) -> SimConfig:
    sim = SimConfig()
    sim.num_clients = 3
    sim.train.rounds = 2
    # one Ray actor runs the clients in turn (a second actor costs ~7 CPU-seconds of start-up
    # per run on 2 cores); tests about concurrent clients pass client_cpus=1
    sim.client_cpus = 2
    sim.partition.min_samples = 1
    for k, v in TINY.items():
        setattr(sim.dataset, k, v)
    for k, v in changes.items():
        obj = sim
        *parents, leaf = k.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, v)
    return sim


def test_hydra_composes_the_same_run_config():
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base=None):
        dcfg = compose("config", overrides=["partition.alpha=0.5", "train.local_epochs=3",
                                            "num_clients=5", "dataset=mtd",
                                            "dataset.root=/abs/path/mtd"])
    sim = OmegaConf.to_object(dcfg)
    cfg = run_config_of(sim)
    assert cfg.partition.alpha == 0.5 and cfg.train.local_epochs == 3
    assert cfg.dataset.name == "mtd" and cfg.dataset.root == "/abs/path/mtd"
    assert cfg.dataset.scored_size() == 224  # defaults come from the dataclass


@pytest.mark.slow
def test_three_clients_two_rounds_through_flower(three_clients_run: Path):
    run = three_clients_run  # conftest.py: tiny_sim(client_cpus=1), two actors at once
    result = json.loads((run / "rounds.json").read_text())
    bank = np.load(run / "global_summary.npz")["bank"]
    h, w, c = bank.shape
    assert (h, w, c) == (16, 16, 176) and np.isfinite(bank).all()  # K = H*W features
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    for rec in result["rounds"]:
        assert rec["train"]["clients"] == 3
        # one float32 bank, serialised by Flower as .npy (a header of ~128 bytes)
        assert h * w * c * 4 <= rec["bytes"]["received_per_client"] <= h * w * c * 4 + 256
        assert rec["bytes"]["sent"] >= (0 if rec["round"] == 0 else 3 * h * w * c * 4)
    final = result["final"]
    assert set(final["per_client"]) == {"0", "1", "2"}
    assert all(0.0 <= v["i_auroc"] <= 1.0 for v in final["per_client"].values())
    assert (run / "summary.md").is_file() and (run / "metrics.png").stat().st_size > 1000
    assert (run / "examples-client0.png").is_file()
    assert not result["rejected"]
    assert (run.parent / "partition.png").stat().st_size > 1000
    # what each site keeps for fedad-predict, and the global summary
    assert all((run / f"site-{i}" / "state.pt").is_file() for i in range(3))
    assert np.array_equal(np.load(run / "global_summary.npz")["bank"], bank)


def test_a_runs_console_holds_fedads_lines_only(three_clients_run: Path):
    """The real fedad-sim's console (conftest.py keeps it): the partition table, fedad's
    lines, the summary; no third-party INFO/DEBUG (faiss's loader, httpx, Flower, Ray), no
    colour codes, no line twice. Those lines are in the run folder's files."""
    out = three_clients_run.parent
    lines = (out / "console.txt").read_text().splitlines()
    fedad = [i for i, ln in enumerate(lines) if FEDAD_LINE.match(ln)]
    first, last = fedad[0], fedad[-1]
    assert lines[0].startswith("Training samples per client")  # the partition table
    assert "completed; results:" in lines[last]
    assert lines[last + 1].startswith("# feddymem run:")  # then the summary
    foreign = [ln for ln in lines[first:last + 1] if not FEDAD_LINE.match(ln)]
    foreign += [ln for ln in lines if "\x1b" in ln or re.search(r"\b(INFO|DEBUG)\b", ln)]
    assert foreign == [], foreign[:10]
    stamped = [ln.split(" ", 1)[1] for ln in lines[first:last + 1]]
    assert len(stamped) == len(set(stamped))  # nothing printed twice
    flower = (out / "flower.log").read_text()
    assert "Starting Flower Simulation" in flower and "\x1b" not in flower
    sim_log = (out / "sim.log").read_text()  # fedad's launcher lines, third-party INFO
    assert "[fedad][INFO] - SuperLink up on" in sim_log and "[httpx][INFO]" in sim_log
    assert "\x1b" not in (out / "superlink.log").read_text()


@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_frozen_feature_detectors_on_the_engine(tmp_path: Path, detector: str):
    """One round is all a frozen-feature detector needs: the run says so, sends each
    client's summary once, merges, evaluates and leaves calibrated sites. On the engine in
    one process: the summary exchange through Flower is the FedDyMem run above, and the
    engine is what the ClientApp and ServerApp call."""
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    cfg = run_config_of(tiny_sim(**{"detector": detector, "calibration.holdout": 0.5,
                                    "padim.channels": 32, "examples": 0}))
    run = tmp_path / "run-1"
    transport = InProcess(cfg, partition_nodes(cfg))
    federate(cfg, transport, transport.keys, run)
    result = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1] and result["label"] == detector
    assert set(result["final"]["per_client"]) == {"0", "1", "2"} and not result["rejected"]
    summary = np.load(run / "global_summary.npz")
    assert all(np.isfinite(summary[k]).all() for k in summary.files)
    up = result["rounds"][0]["bytes"]["received_per_client"]
    if detector == "padim":  # count + mean + upper triangle, float32, 8x8 positions (stride 8)
        assert up >= 8 + 4 * (64 * 32 + 64 * 32 * 33 // 2)
    else:  # a coreset of 152-channel patches (strides 8/16)
        assert summary["bank"].shape[1] == 152 and up >= 152 * 4
    cals = [json.loads((run / f"site-{i}" / "calibration.json").read_text()) for i in range(3)]
    # a threshold exactly where the site held out normals (a 1-image client cannot)
    assert all((c["threshold"] is None) == (c["holdout_images"] == 0) for c in cals)
    assert sum(c["holdout_images"] > 0 for c in cals) >= 2
    assert any("one round gives its final result" in n for n in result["notes"])
    # the validation split is scored too, only by the clients that hold one
    final = result["final"]
    holding = {str(i) for i, c in enumerate(cals) if c["holdout_images"] > 0}
    assert {p for p, m in final["per_client"].items() if "val_i_auroc" in m} == holding
    assert 0.0 <= final["val_i_auroc"]["mean"] <= 1.0
    # and whether it can rank anything is recorded with it (a few images: within chance)
    val = final["validation"]
    assert val["sites"] == len(holding) and val["images"] == sum(
        final["per_client"][p]["val-images"] for p in holding)
    assert val["informative"] == (val["z"] > 2.0)


@pytest.mark.slow
def test_failed_run_is_detected(tmp_path: Path, capsys):
    # Every client fails in round 0, so the ServerApp raises (fewer valid replies than
    # min_clients) naming them: Flower's exit code says nothing, fedad-sim must.
    sim = tiny_sim(num_clients=2, faults=["0:raise", "1:raise"])
    assert launch(sim, tmp_path) == 1
    out = capsys.readouterr().out
    # the console: fedad's line for each client left out, and no traceback (Flower's,
    # printed twice before, is in flower.log)
    assert "(partition 0): error reply: fault injection: partition 0 fails in round 0" in out
    assert "Traceback" not in out and "Traceback" in (tmp_path / "flower.log").read_text()
    # the reason is kept where fedad-sim's status.json takes it from (not only in Flower's
    # state and a traceback on the console)
    reason = failure_of(tmp_path)
    assert reason and reason.startswith("RuntimeError: round 0: 0 valid replies")
    assert "fault injection: partition 0 fails in round 0" in reason


def test_a_bad_file_fails_the_launch_in_seconds_before_flower_starts(tmp_path: Path):
    from fedad.data.screen import screen_local
    from tests.test_predict import site_folder

    root = site_folder(tmp_path / "data")
    sim = tiny_sim(**{"dataset.name": "mvtec", "dataset.root": str(root)})
    out = tmp_path / "out"
    mask = sorted(root.glob("*/ground_truth/*/*_mask.png"))[0]
    kept = mask.read_bytes()
    mask.unlink()  # a missing mask (the sites found it only after Flower's ~30 s launch)
    start = time.perf_counter()
    with pytest.raises(DataError, match="anomalous image without mask"):
        launch(sim, out)
    mask.write_bytes(kept)
    broken = sorted(root.glob("*/train/good/*.png"))[3]
    broken.write_bytes(b"not a png")  # an image that cannot be decoded
    with pytest.raises(BadFilesError) as err:
        launch(sim, out)
    assert time.perf_counter() - start < 30  # both refused before Flower starts
    assert str(broken) in str(err.value) and "1 unreadable file(s)" in str(err.value)
    assert not out.exists()  # nothing made, nothing to clean up
    sim.dataset.on_bad = "skip"  # the sites skip it and record it: no refusal here
    screen_local(sim.dataset)


def test_impossible_partition_fails_before_flower_starts(tmp_path: Path):
    sim = tiny_sim(**{"num_clients": 40, "partition.min_samples": 2})
    with pytest.raises(ConfigError, match="num_clients"):
        launch(sim, tmp_path)
    assert not list(tmp_path.glob("run-*")) and not (tmp_path / "superlink.log").exists()
