"""The app's source as ``flwr run`` packs it, copied into a folder of its own.

``flwr run <dir>`` walks every file under ``<dir>`` (resolving each path) before its
.gitignore and include rules drop all but the app's sources. With the README's install the
repository holds ``.venv/`` (about 50,000 files), and that walk cost ~3.5 s of every run.
:func:`staged_app` walks the app folder without descending into folders whose files the
FAB can never hold (virtualenvs, ``.git``, ``__pycache__``, folders the .gitignore ignores),
keeps what Flower's own publish filter keeps, and copies that into a temporary folder; the
FAB built from it is byte-identical (tests/test_app_stage.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pathspec

log = logging.getLogger("fedad")

# never in a FAB: Flower excludes ``__pycache__`` and ``.venv``; ``.git`` holds no file its
# include patterns (*.py, *.toml, *.md, *.yaml, *.json, ...) match
NEVER_PACKED = {".git", "__pycache__", ".venv", ".flwr"}


def _ignored_dirs(app_dir: Path) -> pathspec.PathSpec | None:
    """The app's root .gitignore as a spec for pruning folders; ``None`` when it has
    negations (a ``!pattern`` may re-include a file below an ignored folder)."""
    gitignore = app_dir / ".gitignore"
    if not gitignore.is_file():
        return pathspec.PathSpec([])
    lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    if any(line.lstrip().startswith("!") for line in lines):
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def packable_files(app_dir: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for the files ``flwr run`` would consider, walked
    without entering folders none of whose files could be packed."""
    root = Path(app_dir).resolve()
    ignored = _ignored_dirs(root)
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel = here.relative_to(root).as_posix()
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            rel_sub = f"{name}/" if rel == "." else f"{rel}/{name}/"
            if (name in NEVER_PACKED or (sub / "pyvenv.cfg").is_file()
                    or (ignored is not None and ignored.match_file(rel_sub))):
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            path = here / name
            if path.is_symlink() or not path.resolve().is_relative_to(root):
                continue  # as Flower's collect_files
            files[path.relative_to(root).as_posix()] = path
    return files


@contextmanager
def staged_app(app_dir: Path) -> Iterator[Path]:
    """``with staged_app(repo) as d: flwr run d ...``: a temporary copy of what the FAB
    packs. Falls back to ``app_dir`` itself when this Flower lacks the publish filter."""
    try:
        from flwr.cli.utils import filter_paths_for_publish
    except ImportError:  # another Flower layout: let flwr run walk the folder itself
        log.debug("flwr.cli.utils.filter_paths_for_publish not found; not staging the app")
        yield Path(app_dir)
        return
    kept = filter_paths_for_publish(packable_files(app_dir))
    with tempfile.TemporaryDirectory(prefix="fedad-app-") as tmp:
        for rel, src in kept.items():
            dest = Path(tmp, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)  # type: ignore[arg-type]
        yield Path(tmp)
