"""Reliability pieces on tiny inputs: unreadable files (refuse / skip), the start-up data
check, checkpoint files, and ``flwr run`` stuck in Flower's pending state."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedad.data.dataset import AnomalyDataset
from fedad.data.io import FileSource
from fedad.data.sample import SampleRecord
from fedad.errors import BadFilesError, ConfigError
from fedad.features.cache import extract_features
from fedad.federation.checkpoint import (
    client_file,
    config_changes,
    load_client,
    load_server,
    save_client,
    save_server,
)
from fedad.federation.server import STARTUP, delivered
from tests.test_server import reply, strategy


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


def file_dataset(root: Path) -> AnomalyDataset:
    """Five normal images, one corrupt image, one anomalous image whose mask has the wrong
    size."""
    records = []
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"ok{i}.png")
        records.append(SampleRecord(path=str(root / f"ok{i}.png"), label=0, product_type="a",
                                    defect_type="good"))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records.append(SampleRecord(path=str(root / "broken.png"), label=0, product_type="a",
                                defect_type="good"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "bad.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "bad_mask.png")
    records.append(SampleRecord(path=str(root / "bad.png"), label=1, product_type="a",
                                defect_type="x", mask_path=str(root / "bad_mask.png")))
    return AnomalyDataset(records, FileSource(), image_size=8)


def test_unreadable_files_are_all_listed_or_skipped(tmp_path: Path):
    ds = file_dataset(tmp_path)
    kw = dict(device=torch.device("cpu"), signature="s", cache="none", batch_size=2,
              desc="client 3 train features")
    with pytest.raises(BadFilesError) as info:
        extract_features(_Mean(), ds, on_bad="refuse", **kw)
    text = str(info.value)
    assert text.startswith("client 3 train features: 2 unreadable file(s)")
    assert "broken.png" in text and "bad_mask.png is 5x5" in text and "dataset.on_bad=skip" in text
    assert len(info.value.files) == 2
    kept = extract_features(_Mean(), ds, on_bad="skip", **kw)
    assert len(kept) == 5 and kept.paths == [str(tmp_path / f"ok{i}.png") for i in range(5)]
    assert kept.masks.shape == (5, 8, 8)  # masks still line up with the images kept
    assert len(kept.skipped) == 2
    assert "not a readable image" in kept.skipped[0] and "broken.png" in kept.skipped[0]
    assert "mask size differs" in kept.skipped[1] and "bad_mask.png" in kept.skipped[1]
    with pytest.raises(ConfigError, match="on_bad"):
        extract_features(_Mean(), ds, on_bad="ignore", **kw)


def check_reply(key: int, pid: int, refused: bool, files: list[str] | None = None):
    r = reply(key, metrics={"partition-id": pid, "refused": int(refused),
                            "train-images": 3, "test-images": 2})
    if files:
        r.lists = {"bad-files" if refused else "skipped-files": files}
    return r


class _Canned:
    """A transport that answers with canned replies."""

    def __init__(self, *replies):
        self.replies = list(replies)

    def send(self, kind, envelopes, timeout, desc):
        return delivered(self.replies, [], envelopes, 0.0)


def checking(keys: list[int]):
    s = strategy()
    s.keys = keys
    return s


def test_start_up_check_refuses_with_every_clients_list_or_records_skips():
    s = checking([1, 2, 3])
    grid = _Canned(check_reply(1, 0, False), check_reply(2, 1, True, ["/d/a.png: corrupt"]),
                   check_reply(3, 2, True, ["/d/b.png: truncated", "/d/c.png: corrupt"]))
    with pytest.raises(RuntimeError) as info:
        s.check_data(grid, timeout=5)
    text = str(info.value)
    assert "(partition 1): 1 unreadable file(s)" in text and "/d/a.png: corrupt" in text
    assert "(partition 2): 2 unreadable file(s)" in text and "/d/c.png" in text
    s = checking([1, 2])
    s.check_data(_Canned(check_reply(1, 0, False, ["/d/x.png: corrupt"]),
                         check_reply(2, 1, False)), timeout=5)
    assert s.skipped_files == {"client node 1 (partition 0)": ["/d/x.png: corrupt"]}
    s = checking([1, 2])
    s.check_data(_Canned(check_reply(1, 0, False), reply(2, error="no data root")), timeout=5)
    assert s.rejected[-1] == f"{STARTUP}, client node 2: data check error reply: no data root"


def test_checkpoints_are_atomic_files_and_clients_keep_two_rounds(tmp_path: Path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_server(tmp_path)
    save_server(tmp_path, {"round": 2, "history": [{"round": 1}]})
    ck = load_server(tmp_path)
    assert ck["round"] == 2 and "rng" in ck and not list(tmp_path.glob("*.tmp"))
    for r in range(4):
        save_client(tmp_path, 1, r, {"w": torch.full((2,), float(r))})
    kept = sorted(p.name for p in (tmp_path / "site-1").glob("checkpoint-*.pt"))
    assert kept == ["checkpoint-2.pt", "checkpoint-3.pt"]
    assert load_client(tmp_path, 1, 2)["w"].tolist() == [2.0, 2.0]
    with pytest.raises(ConfigError, match="site 1 has no checkpoint of round 0"):
        load_client(tmp_path, 1, 0)
    assert client_file(tmp_path, 1, 3).is_file()
    assert config_changes({"train.lr": 0.1, "resume": ""}, {"train.lr": 0.2,
                                                            "resume": "/x"}) == ["train.lr"]
    # a field added since the run was written counts as its default
    defaults = {"diffad.halvings": 4}
    assert config_changes({}, {"diffad.halvings": 4}, defaults) == []
    assert config_changes({}, {"diffad.halvings": 2}, defaults) == ["diffad.halvings"]


def test_a_run_stuck_pending_is_stopped_with_a_message(tmp_path: Path, monkeypatch, caplog):
    """A fake ``flwr``: ``run`` starts run 42 and then waits forever, ``ls`` says pending."""
    from fedad.cli.flwr_run import flwr_run

    fake = tmp_path / "flwr"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = run ]; then echo 'started run 42'; exec sleep 30; "
                    "else echo '{\"runs\": [{\"status\": \"pending\"}]}'; fi\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    with caplog.at_level("ERROR", logger="fedad"):
        run_id = flwr_run(tmp_path, "x", tmp_path / "c.toml", env, pending_timeout=1)
    assert run_id is None
    assert "run 42 stayed pending" in caplog.text and "pending_timeout=1" in caplog.text


def test_scaffold_server_state_survives_a_checkpoint(tmp_path: Path):
    """The server's own state (global weights, SCAFFOLD's control variate, the reference
    shapes, the history) comes back from the checkpoint file as it was."""
    from fedad.config.schema import RunConfig
    from fedad.federation.server import Delivery, Server
    from tests.test_server import toy_weights, weight_reply

    s = Server(RunConfig(method="scaffold"), keys=[1, 2])
    toy_weights(s)
    s.accept(1, Delivery([weight_reply(1, 1.0, 1, control=True),
                          weight_reply(2, 3.0, 1, control=True)]))
    s.history.append({"round": 1})
    s.done_round = 1
    save_server(tmp_path, s.checkpoint_state())
    t = Server(RunConfig(method="scaffold"), keys=[1, 2])
    t.restore(load_server(tmp_path))
    assert t.done_round == 1 and t.history == [{"round": 1}]
    a, b = s.exchange, t.exchange
    assert np.array_equal(a.weights["w"], b.weights["w"])
    assert np.array_equal(a.control["w"], b.control["w"])
    assert float(np.abs(b.control["w"]).sum()) > 0  # the control variate moved and was kept
    assert b.reference == a.reference


def test_leftovers_of_a_killed_run_are_found_by_their_flwr_home(tmp_path: Path):
    """What a SIGKILLed launcher leaves (a SuperLink, its simulation: they inherit
    FLWR_HOME=<run folder>/.flwr) is found and killed; a resume refuses while it runs."""
    import subprocess

    from fedad.cli.crash import kill_processes_naming, processes_of
    from fedad.cli.sim import SimConfig, launch

    proc = subprocess.Popen(["sleep", "60"], env={**os.environ,
                                                  "FLWR_HOME": str(tmp_path / ".flwr")})
    try:
        assert processes_of(tmp_path) == [proc.pid]
        save_server(tmp_path / "run-1", {"round": 1})
        sim = SimConfig()
        sim.resume = str(tmp_path / "run-1")
        with pytest.raises(ConfigError, match="processes of the killed run still run"):
            launch(sim, tmp_path / "again")
        assert kill_processes_naming(tmp_path) == 1
        assert proc.wait(timeout=30) == -9
    finally:
        proc.kill()
    assert processes_of(tmp_path) == []


def test_a_wrapper_naming_the_run_folder_is_not_taken_for_the_killed_run(tmp_path: Path):
    import subprocess
    import sys

    folder = tmp_path / "outputs" / "run-1"
    folder.mkdir(parents=True)
    code = ("import sys; from fedad.cli.crash import processes_of; "
            "print(processes_of(sys.argv[1]))")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              str(folder)])  # a process of the run, not an ancestor
    try:
        # `timeout 60 python ... <folder>`: the wrapper names the folder too
        res = subprocess.run(["timeout", "60", sys.executable, "-c", code, str(folder)],
                             capture_output=True, text=True, check=True)
        assert res.stdout.strip() == f"[{other.pid}]"
    finally:
        other.kill()
        other.wait()


def test_resume_command_names_the_checkpointed_run_and_the_same_overrides(tmp_path: Path):
    from fedad.cli.sim import resume_command

    out = tmp_path / "10-00-00"
    (out / "run-7").mkdir(parents=True)
    assert resume_command(out, ["train.rounds=3"]) is None  # nothing checkpointed yet
    (out / "run-7" / "checkpoint.pt").write_bytes(b"")
    assert resume_command(out, ["train.rounds=3", "dataset.root=/a b"]) == (
        f"fedad-sim resume={out / 'run-7'} train.rounds=3 'dataset.root=/a b'")
    assert resume_command(out, ["resume=/x/run-1", "train.rounds=3"]) == (
        "fedad-sim resume=/x/run-1 train.rounds=3")


def test_resuming_with_other_settings_names_each_with_both_values():
    from fedad.config.flat import to_flat
    from fedad.config.schema import RunConfig
    from fedad.detectors.registry import resolve
    from fedad.federation.run import check_resumable

    run = RunConfig()
    ckpt = {"config": to_flat(resolve(RunConfig())), "round": 1}
    check_resumable(run, ckpt)  # the same settings
    run.train.rounds, run.output_dir = 7, "/elsewhere"  # where it writes does not count
    with pytest.raises(ConfigError, match=r"train.rounds \(run: 10, now: 7\)"):
        check_resumable(run, ckpt)
