"""The staged app copy that ``flwr run`` packs: the same FAB, without walking .venv."""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fedad.cli.app_stage import packable_files, staged_app

PROJECT = Path(__file__).resolve().parents[1]


def test_the_staged_copy_packs_into_the_very_same_fab():
    with staged_app(PROJECT) as staged:
        assert staged != PROJECT and (staged / "pyproject.toml").is_file()
        assert (staged / "server" / "app.py").is_file()
        assert not (staged / ".venv").exists() and not (staged / ".git").exists()
        fab = build_fab_from_disk(staged)
    assert not staged.exists()  # removed after use
    assert fab == build_fab_from_disk(PROJECT)


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_walk_skips_folders_that_can_never_be_packed(tmp_path: Path):
    _tree(tmp_path, ["pyproject.toml", "pkg/a.py", "pkg/__pycache__/a.pyc", ".git/config.json",
                     "myenv/pyvenv.cfg", "myenv/lib/b.py", "outputs/run/rounds.json",
                     "deep/outputs/c.py", "data.npy"])
    (tmp_path / ".gitignore").write_text("/outputs/\n")
    assert sorted(packable_files(tmp_path)) == [".gitignore", "data.npy", "deep/outputs/c.py",
                                                "pkg/a.py", "pyproject.toml"]
    # a negation may re-include a file below an ignored folder: then walk into it
    (tmp_path / ".gitignore").write_text("/outputs/\n!outputs/run/rounds.json\n")
    assert "outputs/run/rounds.json" in packable_files(tmp_path)


def test_without_flowers_publish_filter_flwr_walks_the_folder_itself(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr.cli.utils", None)  # import now raises ImportError
    with staged_app(tmp_path) as staged:
        assert staged == tmp_path
