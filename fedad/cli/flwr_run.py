"""``flwr run`` and ``flwr ls`` as fedad's launchers use them."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedad.cli.app_stage import staged_app

log = logging.getLogger("fedad")


WAITING = ("pending", "starting")  # Flower's run states before the ServerApp runs
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Flower colours its console lines
FEDAD_LINE = re.compile(r"^\d\d:\d\d:\d\d fedad ")  # fedad.progress's format


def plain(text: str) -> str:
    """``text`` without terminal colour codes (what goes into files)."""
    return ANSI.sub("", text)


def strip_ansi_file(path: Path) -> None:
    """Rewrite a log file without terminal colour codes (nothing if it is not there)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    if ANSI.search(text):
        path.write_text(plain(text))


class PendingWatch:
    """Stops ``flwr run`` when its run never leaves Flower's ``pending``/``starting`` state
    (or no run id appears) within ``timeout`` seconds: e.g. no SuperExec picks the ServerApp
    up. Without it, ``flwr run --stream`` waits forever."""

    def __init__(self, proc: subprocess.Popen, connection: str, env: dict[str, str],
                 timeout: float, poll: float = 2.0) -> None:
        self.proc, self.connection, self.env = proc, connection, env
        self.timeout, self.poll = timeout, poll
        self.run_id: str | None = None
        self.stuck: str | None = None  # why the run was stopped
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PendingWatch:
        if self.timeout > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _watch(self) -> None:
        start = time.monotonic()
        while not self._done.wait(self.poll) and self.proc.poll() is None:
            waited = time.monotonic() - start
            if waited < self.timeout:
                continue
            status = run_status(self.run_id, self.connection, self.env) if self.run_id else None
            if self.run_id is None or (status or "").startswith(WAITING):
                what = (f"run {self.run_id} stayed {status}" if self.run_id
                        else "no run started")
                self.stuck = (f"{what} for {waited:.0f}s (pending_timeout={self.timeout:g}): "
                              "no ServerApp was started; check that the SuperLink runs a "
                              "SuperExec for the ServerApp (isolation) and its log")
                log.error("%s; stopping flwr run", self.stuck)
                self.proc.kill()
            return  # running (or finished): nothing more to watch


def flwr_run(app_dir: Path, connection: str, run_config: Path, env: dict[str, str],
             extra: list[str] = (), pending_timeout: float = 600.0,
             log_file: Path | None = None, verbose: bool = False) -> str | None:
    """``flwr run <app_dir> <connection> --stream --run-config <file>``; returns the run id,
    or ``None`` when no run started or it stayed pending longer than ``pending_timeout``
    seconds (0: wait forever). Flower packs the app from a staged copy of its sources
    (:mod:`fedad.cli.app_stage`: same FAB, no walk of .venv).

    Its output (the run's log stream: fedad's lines, Flower's and Ray's) goes, without
    colour codes, to ``log_file``; the console gets fedad's lines only (all of it with
    ``verbose`` or without a ``log_file``), each once."""
    args = [connection, "--stream", "--run-config", str(run_config), *extra]
    log.info("launching: flwr run %s %s", app_dir, " ".join(args))
    with staged_app(app_dir) as staged, \
            subprocess.Popen(["flwr", "run", str(staged), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1) as proc, \
            PendingWatch(proc, connection, env, pending_timeout) as watch:
        assert proc.stdout is not None
        sink = open(log_file, "a") if log_file is not None else None
        try:
            for line in proc.stdout:
                clean = plain(line)
                if sink is not None:
                    sink.write(clean)
                    sink.flush()
                if verbose or sink is None or FEDAD_LINE.match(clean):
                    sys.stdout.write(line if verbose or sink is None else clean)
                m = re.search(r"started run (\d+)", clean)
                if m and watch.run_id is None:
                    watch.run_id = m.group(1)
                    log.info("run %s started; Flower's and Ray's lines: %s", watch.run_id,
                             log_file)
        finally:
            if sink is not None:
                sink.close()
    if watch.stuck:
        return None
    if watch.run_id is None:
        log.error("flwr run did not start a run (exit code %s)", proc.returncode)
    return watch.run_id


def run_status(run_id: str, connection: str, env: dict[str, str]) -> str:
    """``finished:completed`` / ``finished:failed`` ... as the SuperLink reports it
    (``flwr run --stream`` exits 0 even when the ServerApp raised)."""
    return run_record(run_id, connection, env)[0]


def run_record(run_id: str, connection: str, env: dict[str, str]) -> tuple[str, str]:
    """The run's status and Flower's details of it (for a failed run: the exception's
    message, ``""`` when Flower gives none)."""
    res = subprocess.run(["flwr", "ls", connection, "--run-id", run_id, "--format", "json"],
                         env=env, capture_output=True, text=True, check=False)
    try:
        run = json.loads(res.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details") or "")
    except (json.JSONDecodeError, KeyError, IndexError):
        return f"unknown ({res.stdout.strip()[:200]} {res.stderr.strip()[:200]})", ""
