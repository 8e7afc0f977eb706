"""Fixtures shared by test modules (and by pytest-xdist's workers)."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def three_clients_run(tmp_path_factory, worker_id: str) -> Path:
    """The run folder of one FedDyMem run through Flower's simulation runtime (3 clients,
    2 rounds, two Ray actors, tiny textures), made once per test session: the first test
    that asks runs it, under a file lock, and every other test (on any xdist worker) reads
    the same folder. Tests must not write into it."""
    from fedad.cli.sim import launch
    from tests.test_simulation import tiny_sim

    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # the session's, not older ones'
    out = root / "three-clients-run"
    with FileLock(str(out) + ".lock"):
        done = out / "launch-exit-code"
        if not done.is_file():
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(str(launch(tiny_sim(client_cpus=1), out)))
    assert done.read_text() == "0", f"the shared run failed; see {out}"
    (run,) = list(out.glob("run-*"))
    return run
