"""``flwr run`` and ``flwr ls`` as fedad's launchers use them."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("fedad")


def flwr_run(app_dir: Path, connection: str, run_config: Path, env: dict[str, str],
             extra: list[str] = ()) -> str | None:
    """``flwr run <app_dir> <connection> --stream --run-config <file>``, its output passed
    through; returns the run id, or ``None`` when no run started."""
    cmd = ["flwr", "run", str(app_dir), connection, "--stream", "--run-config", str(run_config),
           *extra]
    log.info("launching: %s", " ".join(cmd))
    run_id = None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            m = re.search(r"started run (\d+)", line)
            if m:
                run_id = m.group(1)
    if run_id is None:
        log.error("flwr run did not start a run (exit code %s)", proc.returncode)
    return run_id


def run_status(run_id: str, connection: str, env: dict[str, str]) -> str:
    """``finished:completed`` / ``finished:failed`` ... as the SuperLink reports it
    (``flwr run --stream`` exits 0 even when the ServerApp raised)."""
    res = subprocess.run(["flwr", "ls", connection, "--run-id", run_id, "--format", "json"],
                         env=env, capture_output=True, text=True, check=False)
    try:
        runs = json.loads(res.stdout)["runs"]
        return str(runs[0]["status"])
    except (json.JSONDecodeError, KeyError, IndexError):
        return f"unknown ({res.stdout.strip()[:200]} {res.stderr.strip()[:200]})"
