"""Sweeps through the real ``fedad-sim -m`` (Hydra multirun + Flower simulation), the
report made from the sweep folder, and reproducibility of a run."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from fedad.errors import FedadError
from fedad.evaluation.sweep_report import make_report

TINY = ["num_clients=2", "client_cpus=2", "train.rounds=1", "partition.min_samples=1",
        "eval_every=1", "dataset.texture_train_per_type=6",
        "dataset.texture_test_normal_per_type=2", "dataset.texture_test_anomalous_per_type=2",
        "dataset.image_size=64"]
FEDAD_SIM = str(Path(sys.executable).parent / "fedad-sim")


def sweep(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDAD_SIM, "-m", *TINY, *args, f"hydra.sweep.dir={folder}"],
                          capture_output=True, text=True, timeout=900, check=False)


def rounds_json(job: Path) -> dict:
    status = json.loads((job / "status.json").read_text())
    return json.loads((job / status["run_dir"] / "rounds.json").read_text())


@pytest.mark.slow
def test_sweep_runs_every_combination_reports_and_resumes(tmp_path: Path):
    folder = tmp_path / "sweep"
    # alpha=0.5 x E=1,2 plus alpha=-1, which fails for both E before Flower starts (two real
    # runs: every Flower run costs ~40 s of the suite's 10 minutes)
    res = sweep(folder, "partition.alpha=0.5,-1", "train.local_epochs=1,2")
    log = res.stdout + res.stderr
    assert res.returncode == 1, log  # some combinations failed, after all of them ran
    assert "2 of 4 runs completed" in log, log[-3000:]
    jobs = sorted(p for p in folder.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    status = {j.name: json.loads((j / "status.json").read_text()) for j in jobs}
    failed = sorted(n for n, s in status.items() if s["status"] == "failed")
    assert len(failed) == 2
    assert all("partition.alpha=-1" in status[n]["overrides"] for n in failed)
    assert all("alpha" in status[n]["error"] for n in failed)
    for j in jobs:  # each run records what produced it
        versions = json.loads((j / "versions.json").read_text())
        assert versions["packages"]["flwr"] == metadata.version("flwr")
        assert versions["packages"]["torch"] == metadata.version("torch")
        assert set(versions["packages"]) >= {"fedad", "timm", "faiss"}

    files = make_report(folder)
    table = json.loads(files["json"].read_text())
    cells = {(r["partition.alpha"], r["train.local_epochs"]): r for r in table["rows"]}
    assert set(cells) == {(0.5, 1), (0.5, 2), (-1.0, 1), (-1.0, 2)}
    for (alpha, e), row in cells.items():
        assert row["method"] == "feddymem"
        if alpha < 0:
            assert row["seeds"] == [] and len(row["failed"]) == 1 and row["i_auroc"] is None
            continue
        assert row["seeds"] == [0] and not row["failed"]
        job = next(j for j in jobs if f"partition.alpha={alpha}" in status[j.name]["overrides"]
                   and f"train.local_epochs={e}" in status[j.name]["overrides"])
        assert row["i_auroc"]["mean"] == rounds_json(job)["final"]["i_auroc"]["mean"]
        assert row["curve"]["rounds"] == [1]
    md = files["md"].read_text()
    assert "2 of 4 runs completed" in md and "## Failed runs" in md
    assert md.count("`partition.alpha=-1") == 2  # the failed runs, one row each
    for name in ("rounds", "epochs", "alpha", "bytes"):
        assert files[name].stat().st_size > 5000, name
    # the same folder gives byte-identical files
    before = {k: p.read_bytes() for k, p in files.items()}
    again = make_report(folder)
    assert {k: p.read_bytes() for k, p in again.items()} == before

    # resume: the same sweep in the same folder skips what completed and runs the failed
    # combinations again (a run killed mid-way has no status.json and is run anew). That the
    # same config and seed reproduce every metric is tests/test_reliability.py's kill test.
    mtimes = {j.name: (j / "status.json").stat().st_mtime_ns for j in jobs}
    res = sweep(folder, "partition.alpha=0.5,-1", "train.local_epochs=1,2")
    assert res.returncode == 1
    assert (res.stdout + res.stderr).count("completed before with these overrides") == 2
    for j in jobs:
        changed = (j / "status.json").stat().st_mtime_ns != mtimes[j.name]
        assert changed == (j.name in failed), j.name
        assert len(list(j.glob("run-*"))) == (0 if j.name in failed else 1)


def test_report_names_what_is_wrong(tmp_path: Path):
    with pytest.raises(FedadError, match="not a folder"):
        make_report(tmp_path / "missing")
    with pytest.raises(FedadError, match="no run folders"):
        make_report(tmp_path)


def test_a_failed_single_run_is_reported_with_its_reason(tmp_path: Path):
    from fedad.evaluation.run_status import write_status

    run = tmp_path / "10-00-00"  # what one fedad-sim run leaves when the run failed
    run.mkdir()
    write_status(run, "failed", ["train.rounds=2"], "RuntimeError: round 0: 0 valid replies "
                 "(client node 7 (partition 1): error reply: mask missing: a/b_mask.png)")
    report = make_report(run)["md"].read_text()
    assert "## Failed runs" in report and "10-00-00" in report
    assert "client node 7 (partition 1): error reply: mask missing: a/b_mask.png" in report


def test_a_cell_with_one_seed_shows_no_spread():
    from fedad.evaluation.sweep_report import _fmt, _stat

    assert _fmt(_stat([0.75])) == "0.7500"  # not "0.7500 ± 0.0000": one seed has no spread
    assert _fmt(_stat([0.7, 0.8])) == "0.7500 ± 0.0500"
    assert _fmt(None) == "n/a"
