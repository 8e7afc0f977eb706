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

from fedad.cli.processes import alive, ancestors, descendants
from fedad.federation.checkpoint import SERVER_FILE

log = logging.getLogger("fedad")


def checkpointed_round(out: Path) -> int:
    """The round of the newest server checkpoint under ``out`` (-1: none yet)."""
    best = -1
    for path in out.glob(f"run-*/{SERVER_FILE}"):
        try:
            best = max(best, int(torch.load(path, map_location="cpu", weights_only=False)["round"]))
        except Exception:  # being renamed into place: read it next time
            continue
    return best


def kill_tree(root: int) -> int:
    """SIGKILL ``root`` and everything below it. Flower's simulation process and Ray's
    workers live in sessions of their own under the SuperLink, so a kill of the launcher's
    process group alone leaves the run going (it would write into the run folder while a
    resumed run does too). The tree is frozen (SIGSTOP) until no new process appears, then
    killed, so nothing escapes by being re-parented. Returns how many processes."""
    frozen: set[int] = set()
    while True:
        new = ({root} | set(descendants(root))) - frozen
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        frozen |= new
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30  # SIGKILL is delivered, not yet done: wait for it
    while time.monotonic() < deadline and any(alive(pid) for pid in frozen):
        time.sleep(0.05)
    return len(frozen)


def processes_of(folder: Path) -> list[int]:
    """Processes whose command line or environment names ``folder``: a SuperLink started for
    a run folder and, since they inherit its ``FLWR_HOME``, everything it started. Linux
    ``/proc`` only (processes of other users are not readable and not listed). This
    process and its ancestors are not listed: a wrapper that started it (``timeout 300
    fedad-sim resume=<run dir>``, a batch script) names the folder too."""
    if not Path("/proc").is_dir():
        return []
    key = str(folder).encode()
    found = []
    mine = {os.getpid(), *ancestors(os.getpid())}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in mine:
            continue
        try:
            if ((key in Path(f"/proc/{pid}/cmdline").read_bytes()
                 or key in Path(f"/proc/{pid}/environ").read_bytes()) and alive(int(pid))):
                found.append(int(pid))
        except OSError:
            continue
    return found


def kill_processes_naming(folder: Path) -> int:
    """SIGKILL the trees of :func:`processes_of` ``folder``. Returns how many processes."""
    return sum(kill_tree(pid) for pid in processes_of(folder))


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
    finally:  # the tree goes whether the round came, the run ended or the wait timed out
        kill_tree(proc.pid)
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
