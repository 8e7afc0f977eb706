"""A SuperLink of our own for one simulation: free port, private ``FLWR_HOME``, stopped
(with every process it spawned) when the run ends.

Flower's managed ``:local:`` SuperLink keeps running after ``flwr run`` returns and uses a
fixed port; ``fedad-sim`` starts its own instead so it can clean up what it started and
several runs can go side by side.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedad.errors import FedadError

log = logging.getLogger("fedad")
CONNECTION = "fedad-sim"


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


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower commands: private home, no runtime installs, no telemetry."""
    env = os.environ.copy()
    # Flower's processes find each other by name: put this interpreter's bin first on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONUNBUFFERED": "1"})
    return env


class LocalSuperLink:
    """``with LocalSuperLink(home) as link:`` runs ``flower-superlink --simulation``."""

    def __init__(self, home: Path, log_file: Path, startup_timeout: float = 60.0) -> None:
        self.home = Path(home)
        self.log_file = Path(log_file)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.env = flower_env(self.home)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_connection(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\ninsecure = true\n')

    def __enter__(self) -> LocalSuperLink:
        self.write_connection()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.home / "state.db"), "--log-file", str(self.log_file)]
        self.process = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FedadError(f"flower-superlink exited with code {self.process.returncode}"
                                 f"; see {self.log_file}")
            try:
                if httpx.get(f"http://{self.address}/health", timeout=1.0).is_success:
                    log.info("SuperLink up on %s (FLWR_HOME=%s)", self.address, self.home)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise FedadError(f"flower-superlink did not start in {self.startup_timeout:.0f}s; "
                         f"see {self.log_file}")

    def stop(self) -> None:
        """Terminate the SuperLink and everything it spawned (SuperExec, Ray, apps)."""
        if self.process is None:
            return
        pids = [*descendants(self.process.pid), self.process.pid]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in pids if _alive(p)]  # never signal a recycled pid
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self.process.poll()  # reap the SuperLink itself if it exited
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
                self.process.poll()
            if not any(_alive(p) for p in pids):
                break
        self.process.wait(timeout=5)
        self.process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
