"""Flower's server processes started by fedad (SuperLink, SuperNodes), each stopped together
with everything it spawned (SuperExec, Ray, ServerApp/ClientApp processes) and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedad.errors import FedadError

log = logging.getLogger("fedad")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def ancestors(pid: int) -> list[int]:
    """``pid``'s parent, its parent's parent, ... (Linux ``/proc``; empty elsewhere)."""
    out = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.append(pid)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower commands: private home, no runtime installs, no telemetry."""
    env = os.environ.copy()
    # Flower's processes find each other by name: put this interpreter's bin first on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONUNBUFFERED": "1"})
    return env


class ManagedProcess:
    """A Flower server process with its output in ``log_file``; :meth:`stop` ends it and
    every process it spawned."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_file: Path) -> None:
        self.name, self.cmd, self.env, self.log_file = name, cmd, env, Path(log_file)
        self.process: subprocess.Popen | None = None

    def start(self) -> ManagedProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(self.cmd, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.info("started %s (pid %d); log: %s", self.name, self.process.pid, self.log_file)
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_http(self, url: str, timeout: float, ca_file: Path | None = None) -> None:
        """Wait until ``url`` answers 2xx (the SuperLink's ``/health``).

        Raises:
            FedadError: the process exited or did not answer in time (names its log).
        """
        verify: bool | ssl.SSLContext = (ssl.create_default_context(cafile=str(ca_file))
                                         if ca_file else False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise FedadError(f"{self.name} exited with code {self.returncode}; see "
                                 f"{self.log_file}")
            try:
                if httpx.get(url, timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise FedadError(f"{self.name} did not answer {url} in {timeout:.0f}s; see "
                         f"{self.log_file}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, this process and its descendants (found before signalling,
        so that recycled pids are never hit)."""
        if self.process is None:
            return
        pids = [*descendants(self.process.pid), self.process.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in pids if alive(p)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self.process.poll()  # reap the process itself if it exited
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(alive(p) for p in pids):
                time.sleep(0.2)
                self.process.poll()
            if not any(alive(p) for p in pids):
                break
        self.process.wait(timeout=5)
        self.process = None


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, a batch system's timeout) into ``SystemExit`` so that the
    context managers above stop every process they started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
