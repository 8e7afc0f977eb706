"""Fixtures shared by test modules (and by pytest-xdist's workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock


def pytest_configure(config) -> None:
    """One torch thread per xdist worker: two workers on two cores, each with torch's
    default of one thread per core, would run four threads on two cores and wait on each
    other: `pytest -m "not slow"` took 173 s so, 74 s with one thread each)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# the run of tests.test_simulation.tiny_sim(client_cpus=1), as overrides of the command line
THREE_CLIENTS = ["num_clients=3", "train.rounds=2", "client_cpus=1", "partition.min_samples=1",
                 "dataset.texture_train_per_type=6", "dataset.texture_test_normal_per_type=2",
                 "dataset.texture_test_anomalous_per_type=2", "dataset.image_size=64"]


@pytest.fixture(scope="session")
def three_clients_run(tmp_path_factory, worker_id: str) -> Path:
    """The run folder of one FedDyMem run through the real ``fedad-sim`` command and
    Flower's simulation runtime (3 clients, 2 rounds, two Ray actors, tiny textures), made
    once per test session: the first test that asks runs it, under a file lock, and every
    other test (on any xdist worker) reads the same folder (its console is kept beside
    it, ``console.txt``). Tests must not write into it."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the session's, not older ones'
    out = root / "three-clients-run"
    with FileLock(str(out) + ".lock"):
        done = out / "launch-exit-code"
        if not done.is_file():
            done.parent.mkdir(parents=True, exist_ok=True)
            res = subprocess.run([str(Path(sys.executable).parent / "fedad-sim"),
                                  *THREE_CLIENTS, f"hydra.run.dir={out}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 timeout=900, check=False)  # the console, in its order
            (out / "console.txt").write_text(res.stdout)
            done.write_text(str(res.returncode))
    assert done.read_text() == "0", f"the shared run failed; see {out}"
    (run,) = list(out.glob("run-*"))
    return run
