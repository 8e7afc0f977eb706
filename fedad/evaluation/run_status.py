"""``status.json``: whether one run of a sweep (one folder) completed or failed, and with
which overrides, so a sweep can skip what is done and a report can list what failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

STATUS = "status.json"
FAILURE = "failure.json"  # why a run failed, written where it failed (the ServerApp)


def write_failure(folder: Path, exc: BaseException) -> Path | None:
    """Record why a run stopped (``folder/failure.json``: the exception's type and its
    message, which names the client, file or field) so the launcher can say it without
    digging in Flower's state; ``None`` when the folder cannot be written."""
    path = Path(folder) / FAILURE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"type": type(exc).__name__, "error": str(exc)}, indent=2)
                       + "\n")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def read_failure(*folders: Path) -> str | None:
    """The recorded reason of the first of ``folders`` that holds one."""
    for folder in folders:
        try:
            got = json.loads((Path(folder) / FAILURE).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return f"{got.get('type', 'Error')}: {got.get('error', '')}"
    return None


def write_status(out: Path, status: str, overrides: list[str], error: str | None = None,
                 run_dir: Path | None = None) -> Path:
    """Write ``out/status.json`` atomically (temp file + rename): ``status`` is
    ``completed`` or ``failed``."""
    path = Path(out) / STATUS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "overrides": list(overrides), "error": error,
                               "run_dir": run_dir.name if run_dir else None},
                              indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_status(out: Path) -> dict | None:
    """The folder's status, or ``None`` when it has none (never started, or killed)."""
    path = Path(out) / STATUS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_folders(sweep: Path) -> list[Path]:
    """The run folders of a sweep (Hydra job folders, or folders with a ``status.json``),
    in job order (``0, 1, ..., 10``)."""
    jobs = [p for p in Path(sweep).iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / STATUS).is_file())]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def completed_with(out: Path, overrides: list[str]) -> bool:
    """True when ``out`` holds a completed run made with exactly ``overrides`` (a sweep
    re-run in the same folder skips it; a changed sweep list never reuses a run that was
    made with other values)."""
    status = read_status(out)
    return bool(status and status["status"] == "completed"
                and sorted(status["overrides"]) == sorted(overrides))
