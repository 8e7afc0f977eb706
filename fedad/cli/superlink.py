"""A SuperLink of our own for one simulation: free port, private ``FLWR_HOME``, stopped
(with every process it spawned) when the run ends.

Flower's managed ``:local:`` SuperLink keeps running after ``flwr run`` returns and uses a
fixed port; ``fedad-sim`` starts its own instead so it can clean up what it started and
several runs can go side by side.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedad.cli.connections import Connection, write_connections
from fedad.cli.flwr_run import strip_ansi_file
from fedad.cli.processes import ManagedProcess, flower_env, free_port

log = logging.getLogger("fedad")
CONNECTION = "fedad-sim"


class LocalSuperLink:
    """``with LocalSuperLink(home) as link:`` runs ``flower-superlink --simulation``."""

    def __init__(self, home: Path, log_file: Path, startup_timeout: float = 60.0) -> None:
        self.home = Path(home)
        self.log_file = Path(log_file)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.env = flower_env(self.home)
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalSuperLink:
        write_connections(self.home, [Connection(CONNECTION, self.address)], default=CONNECTION)
        cmd = ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.home / "state.db")]
        self.proc = ManagedProcess("flower-superlink", cmd, self.env, self.log_file).start()
        self.proc.wait_http(f"http://{self.address}/health", self.startup_timeout)
        log.info("SuperLink up on %s (FLWR_HOME=%s)", self.address, self.home)
        return self

    def stop(self) -> None:
        """Terminate the SuperLink and everything it spawned (SuperExec, Ray, apps)."""
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
            strip_ansi_file(self.log_file)  # Flower colours its lines even into a file

    def __exit__(self, *exc: object) -> None:
        self.stop()
