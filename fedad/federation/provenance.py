"""What produced a run: the versions of the packages whose behaviour changes its numbers and
the git commit of the source tree, written next to the run's results."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("fedad", "flwr", "torch", "timm", "numpy", "scikit-learn", "hydra-core")
FAISS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(source: Path) -> dict | None:
    """``{"commit", "dirty"}`` of the git work tree at ``source``; ``None`` outside one (an
    installed wheel, a Flower app bundle) or without git."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(source), *args], capture_output=True,
                                 text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def versions(source: Path) -> dict:
    """Python, platform, package versions (``None`` = not installed) and the git commit."""
    packages = {name: _version(name) for name in PACKAGES}
    faiss = next(((d, v) for d in FAISS if (v := _version(d))), (None, None))
    packages["faiss"] = f"{faiss[1]} ({faiss[0]})" if faiss[0] else None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": packages, "git": git_commit(source)}


def write_versions(out: Path, source: Path) -> Path:
    """``out/versions.json`` (see :func:`versions`)."""
    path = Path(out) / "versions.json"
    path.write_text(json.dumps(versions(source), indent=2, sort_keys=True) + "\n")
    return path
