"""Faults injected through Flower's real simulation runtime (issue 12): bad uploads and a
failing client, a run killed with SIGKILL and resumed, a poisoned client under robust
aggregation. What the faults do is fedad/federation/faults.py; the numbers at scale are
benchmarks/reliability.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedad.cli.crash import checkpointed_round, processes_of, run_and_kill
from fedad.cli.sim import launch
from tests.test_simulation import TINY, tiny_sim


def only_run(folder: Path) -> Path:
    (run,) = list(folder.glob("run-*"))
    return run


def by_partition(counts: dict[str, int]) -> dict[int, int]:
    """``{"client node N (partition p)": n}`` -> ``{p: n}``."""
    return {int(k.rsplit("partition ", 1)[1].rstrip(")")): v for k, v in counts.items()}


@pytest.mark.slow
def test_bad_uploads_a_failing_client_and_a_poisoned_bank_in_one_federation(tmp_path: Path):
    """Every fault at once, in one run of 6 clients: (a) one uploads NaNs, another a
    wrong-shaped bank: both rejected every round; (b) a third raises in round 2: the run
    completes with the others; (d) a fourth uploads its bank shifted far away and, with
    robust aggregation on, is dropped every round (and no honest client is), so no shifted
    feature reaches the global bank. The metric change against a clean run is measured at
    scale in benchmarks/results/reliability.md."""
    sim = tiny_sim(num_clients=6, faults=["0:nan", "1:shape", "2:raise@2", "3:shift"],
                   **{"robust.enabled": True})
    assert launch(sim, tmp_path) == 0
    run = only_run(tmp_path)
    result = json.loads((run / "rounds.json").read_text())
    assert [(r["round"], r["train"]["clients"]) for r in result["rounds"]] == [
        (0, 3), (1, 3), (2, 2)]
    assert by_partition(result["rejected_per_client"]) == {0: 3, 1: 3, 2: 1, 3: 3}
    reasons = "\n".join(result["rejected"])
    assert "(partition 0): 'bank' holds" in reasons and "non-finite" in reasons
    assert "(partition 1): 'bank' has shape (16, 16, 175), expected (16, 16, 176)" in reasons
    assert "partition 2 fails in round 2" in reasons
    assert [[by_partition({d: 0}) for d in e["dropped"]] for e in result["robust"]] == [
        [{3: 0}]] * 3
    bank = np.load(run / "global_summary.npz")["bank"]
    assert np.isfinite(bank).all() and np.abs(bank).max() < 50  # the shift is +100
    # nothing lost: every round recorded, every client evaluated at the end
    assert set(result["final"]["per_client"]) == {str(i) for i in range(6)}
    assert "| client node" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_a_run_killed_after_round_1_resumes_to_the_same_metrics(tmp_path: Path,
                                                                 three_clients_run: Path):
    """(c) SIGKILL fedad-sim (launcher and Flower processes) once round 1 is checkpointed,
    then ``resume=<run dir>``: the rounds, every client's metrics, the losses and the global
    bank equal those of an uninterrupted run with the same config and seed (conftest.py's
    shared run; the clients' heads and optimisers come back from the sites' checkpoints)."""
    changes = {"num_clients": 3, "train.rounds": 2, "client_cpus": 1}  # as the shared run
    overrides = [f"{k}={v}" for k, v in changes.items()] + [
        "partition.min_samples=1", *(f"dataset.{k}={v}" for k, v in TINY.items())]
    run = run_and_kill(overrides, tmp_path / "killed", after_round=1, timeout=900)
    # nothing of the killed run goes on writing into its folder (Flower's simulation and Ray
    # run in sessions of their own: killing the launcher's group alone would leave them)
    assert processes_of(tmp_path / "killed") == []
    assert checkpointed_round(tmp_path / "killed") == 1
    # each site keeps its last two rounds; it may have trained round 2 before the kill (the
    # server had not checkpointed it), and round 1, where the run resumes, is always kept
    sites = list(run.glob("site-*"))
    assert len(sites) == 3
    for site in sites:
        kept = {p.name for p in site.glob("checkpoint-*.pt")}
        assert "checkpoint-1.pt" in kept and kept <= {f"checkpoint-{r}.pt" for r in (0, 1, 2)}
    assert launch(tiny_sim(**changes, resume=str(run)), tmp_path / "resumed") == 0
    full = three_clients_run
    a, b = (json.loads((r / "rounds.json").read_text()) for r in (run, full))
    assert [r["round"] for r in a["rounds"]] == [0, 1, 2]
    assert a["final"]["per_client"] == b["final"]["per_client"]
    # rounds 0-1 of ``a`` come from the killed process, round 2 from the resumed one: two
    # independent runs with the same config and seed agree in every metric of every round
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert ra["train"]["loss"] == rb["train"]["loss"]
        assert (ra.get("evaluate") or {}).get("per_client") == (
            rb.get("evaluate") or {}).get("per_client")
    assert a["rounds"][-1]["evaluate"]["per_client"]  # the last round was evaluated
    assert np.array_equal(np.load(run / "global_summary.npz")["bank"],
                          np.load(full / "global_summary.npz")["bank"])
