"""Build-time check of an image: the installed ``flwr`` is the version every image of the
deployment was built for, and that version satisfies the project's own requirement.

    python deploy/check_flwr_version.py 1.42.0 [pyproject.toml]

Exits non-zero with the mismatch named. Run by the app's Dockerfile after ``pip install``.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def flwr_requirement(pyproject: Path) -> str | None:
    """The version specifier of the ``flwr`` dependency in ``pyproject`` (None if absent)."""
    match = re.search(r'"flwr(?:\[[^\]]*\])?\s*([<>=!~][^";]*)', pyproject.read_text())
    return match.group(1).strip() if match else None


def check(expected: str, pyproject: Path | None) -> str | None:
    """An error message, or None when the versions agree."""
    try:
        installed = version("flwr")
    except PackageNotFoundError:
        return "flwr is not installed in this image"
    if installed != expected:
        return (f"this image has flwr {installed}, but the deployment is built for "
                f"FLWR_VERSION={expected}: SuperLink, SuperNodes and SuperExecs must run one "
                "Flower version")
    spec = flwr_requirement(pyproject) if pyproject else None
    if spec:
        from packaging.specifiers import SpecifierSet

        if expected not in SpecifierSet(spec):
            return (f"FLWR_VERSION={expected} is outside the project's requirement "
                    f"flwr{spec} ({pyproject})")
    return None


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    error = check(argv[0], Path(argv[1]) if len(argv) > 1 else None)
    if error:
        print(f"check_flwr_version: error: {error}", file=sys.stderr)
        return 1
    print(f"flwr {argv[0]} in this image, as every image of the deployment")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
