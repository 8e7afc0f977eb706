"""A real crash for reliability tests and benchmarks: ``fedad-sim`` started in its own
session and killed with SIGKILL, launcher and every Flower process with it, once the server
has checkpointed a given round. What is left is what a power cut leaves: a run folder with
its last checkpoint, ready for ``fedad-sim resume=<run dir>``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fedad.checkpoint import SERVER_FILE

log = logging.getLogger("fedad")


def checkpointed_round(out: Path) -> int:
    """The round of the newest server checkpoint under ``out`` (-1: none yet)."""
    best = -1
    for path in out.glob(f"run-*/{SERVER_FILE}"):
        try:
            best = max(best, int(torch.load(path, weights_only=False)["round"]))
        except Exception:  # being renamed into place: read it next time
            continue
    return best


def kill_processes_naming(folder: Path) -> int:
    """SIGKILL the process groups of processes whose command line names ``folder`` (the
    SuperLink runs in its own session, with its SuperExec, simulation and Ray under it, so
    killing the launcher alone leaves it running). Linux ``/proc`` only. Returns how many."""
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(folder) in cmd and int(pid) != os.getpid():
                os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def run_and_kill(overrides: Sequence[str], out: Path, after_round: int,
                 timeout: float = 3600.0, log_file: Path | None = None) -> Path:
    """Run ``fedad-sim <overrides> hydra.run.dir=<out>``, SIGKILL it once round
    ``after_round`` is checkpointed, and return the run folder (``<out>/run-<id>``).

    Raises:
        RuntimeError: the run ended or timed out before that round, with the log's tail.
    """
    out = Path(out).resolve()
    log_file = log_file or out.with_name(out.name + ".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "from fedad.cli.sim import main; main()", *overrides,
           f"hydra.run.dir={out}"]
    start = time.monotonic()
    with open(log_file, "w") as fh:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    try:
        while (proc.poll() is None and checkpointed_round(out) < after_round
               and time.monotonic() - start < timeout):
            time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        kill_processes_naming(out)
    done = checkpointed_round(out)
    if done < after_round:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"the run reached round {done}, not {after_round}, before it "
                           f"ended or timed out; log {log_file}:\n{tail}")
    log.info("killed %s after round %d (checkpoint of round %d)", out, after_round, done)
    (run,) = list(out.glob("run-*"))
    return run
