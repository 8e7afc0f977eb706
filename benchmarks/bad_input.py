"""First contact: every mistake of issue 55's probes, run through the real commands, with
what the user sees.

    python benchmarks/bad_input.py [--work DIR] [--out DIR] [--launched]

Builds its own tiny folders (an MVTec-layout copy of the embedded textures, 64 px; a broken
image, a missing mask, an empty train folder, one training image) and a finished one-site
PaDiM run (in process, as ``fedad-centralized`` makes it) for ``fedad-predict``,
``fedad-export`` and ``fedad-report``. Each probe runs one command in a fresh process and
records its exit code, the seconds until it exited (Python's start and fedad's imports, ~5
s on 2 cores, included) and the last line of its output, the error a user reads; then
whether anything was lost: the finished run's files are hashed before and after every
probe and must be equal, and a probe refused before launch must leave no output folder.
``--launched`` adds one run that fails after Flower's launch (every site raises in round
0), to show that its reason reaches ``status.json`` and the console's last line.

Writes ``bad_input.json`` and ``bad_input.md`` to ``--out`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ["dataset.image_size=64", "num_clients=2", "train.rounds=1", "partition.min_samples=1"]


def site_folder(root: Path, train_per_type: int = 4) -> Path:
    """The embedded textures written as an MVTec-layout folder (64 px)."""
    from fedad.config.schema import DataConfig
    from fedad.data.export import write_mvtec
    from fedad.data.factory import build_dataset

    cfg = DataConfig(texture_train_per_type=train_per_type, texture_test_normal_per_type=1,
                     texture_test_anomalous_per_type=1, image_size=64)
    for split in ("train", "test"):
        ds = build_dataset(cfg, split)
        write_mvtec(ds.source, ds.records, split, root)
    return root


def finished_run(work: Path) -> Path:
    """A one-site PaDiM run on the engine, the folder fedad-predict reads."""
    from fedad.config.schema import RunConfig
    from fedad.federation.centralized import run_centralized

    cfg = RunConfig(detector="padim")
    cfg.dataset.name, cfg.dataset.root = "mvtec", str(site_folder(work / "site-data", 6))
    cfg.dataset.image_size, cfg.padim.channels, cfg.train.rounds = 64, 16, 1
    cfg.calibration.holdout, cfg.calibration.quantile = 0.35, 0.75
    run = work / "finished" / "run-1"
    run_centralized(cfg, run)
    return run


def fingerprint(folder: Path) -> str:
    """A hash of every file's path and bytes under ``folder``."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def probes(work: Path, run: Path) -> list[tuple[str, list[str], Path | None]]:
    """(what the user did, the command, the output folder it must not leave behind)."""
    good = site_folder(work / "good")
    broken = site_folder(work / "broken")
    next(iter(sorted(broken.glob("*/train/good/*.png")))).write_bytes(b"not a png")
    nomask = site_folder(work / "nomask")
    next(iter(sorted(nomask.glob("*/ground_truth/*/*_mask.png")))).unlink()
    empty = site_folder(work / "empty")
    for f in empty.glob("*/train/good/*.png"):
        f.unlink()
    one = site_folder(work / "one")
    for product in sorted(p for p in one.iterdir() if p.is_dir())[1:]:
        shutil.rmtree(product)  # one product type
    for f in sorted(one.glob("*/train/good/*.png"))[1:]:
        f.unlink()  # with one training image
    images = work / "images"
    images.mkdir(exist_ok=True)
    for i, f in enumerate(sorted(good.glob("*/test/*/*.png"))[:3]):
        shutil.copy(f, images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    sim, out = str(BIN / "fedad-sim"), work / "outs"

    def run_dir(name: str) -> list[str]:
        return [f"hydra.run.dir={out / name}"]

    mvtec = ["dataset=mvtec", *TINY]
    return [
        ("a key that does not exist (Flower's num_rounds)", [sim, "num_round=2",
                                                           *run_dir("p1")], out / "p1"),
        ("the same with Hydra's + hint", [sim, "+num_round=2", *run_dir("p2")], out / "p2"),
        ("a negative number of rounds", [sim, "train.rounds=-1", *run_dir("p3")], out / "p3"),
        ("an image size too small to score", [sim, "dataset.image_size=7", *run_dir("p4")],
         out / "p4"),
        ("zero images per client", [sim, "partition.min_samples=0", *run_dir("p5")],
         out / "p5"),
        ("an unknown detector", [sim, "detector=nosuch", *run_dir("p6")], out / "p6"),
        ("a data root that does not exist", [sim, *mvtec, "dataset.root=/no/such/folder",
                                              *run_dir("p7")], out / "p7"),
        ("an empty train folder", [sim, *mvtec, f"dataset.root={empty}", *run_dir("p8")],
         out / "p8"),
        ("an image that cannot be decoded", [sim, *mvtec, f"dataset.root={broken}",
                                             *run_dir("p9")], out / "p9"),
        ("a defect image without its mask", [sim, *mvtec, f"dataset.root={nomask}",
                                             *run_dir("p10")], out / "p10"),
        ("one training image for five sites", [sim, "dataset=mvtec", "dataset.image_size=64",
                                               f"dataset.root={one}", *run_dir("p11")],
         out / "p11"),
        ("resume a folder that does not exist", [sim, "resume=/no/such/run-1",
                                                 *run_dir("p12")], out / "p12"),
        ("fedad-predict on a run folder that does not exist",
         [str(BIN / "fedad-predict"), "/no/such/run-1", str(images)], None),
        ("fedad-predict with an unreadable image",
         [str(BIN / "fedad-predict"), str(run), str(images), "--no-heatmaps", "--out",
          str(work / "pred1")], work / "pred1"),
        ("fedad-predict --skip-bad (lists what it skipped)",
         [str(BIN / "fedad-predict"), str(run), str(images), "--no-heatmaps", "--skip-bad",
          "--out", str(work / "pred2")], None),
        ("fedad-predict --site -1", [str(BIN / "fedad-predict"), str(run), str(images),
                                     "--site", "-1"], None),
        ("fedad-predict --site 3 of a one-site run",
         [str(BIN / "fedad-predict"), str(run), str(images), "--site", "3"], None),
        ("fedad-export --check-images with an unreadable image",
         [str(BIN / "fedad-export"), str(run), "--out", str(work / "x.onnx"),
          "--check-images", str(images)], None),
        ("fedad-report on a folder that does not exist",
         [str(BIN / "fedad-report"), "/no/such/sweep"], None),
        ("fedad-report on a folder without runs", [str(BIN / "fedad-report"), str(images)],
         None),
    ]


def run_probe(what: str, cmd: list[str], leaves: Path | None, run: Path,
              before: str) -> dict:
    start = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=900, check=False)  # the console in its order
    seconds = time.perf_counter() - start
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    lost = []
    if fingerprint(run) != before:
        lost.append(f"{run} changed")
    if leaves is not None and res.returncode != 0 and leaves.exists():
        lost.append(f"left {leaves}")
    return {"what": what, "command": " ".join(Path(c).name if c.startswith(str(BIN)) else c
                                             for c in cmd),
            "exit": res.returncode, "seconds": round(seconds, 1),
            "last_line": lines[-1] if lines else "", "lines": len(lines), "lost": lost}


def launched_failure(work: Path) -> dict:
    """A run that fails after Flower's launch: every site raises in round 0."""
    out = work / "outs" / "launched"
    cmd = [str(BIN / "fedad-sim"), "num_clients=2", "train.rounds=1",
           "partition.min_samples=1", "dataset.image_size=64", "faults=[0:raise,1:raise]",
           f"hydra.run.dir={out}"]
    start = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=900, check=False)
    status = json.loads((out / "status.json").read_text())
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return {"what": "every site fails in round 0 (after Flower's launch)",
            "command": "fedad-sim ... faults=[0:raise,1:raise]", "exit": res.returncode,
            "seconds": round(time.perf_counter() - start, 1),
            "last_line": lines[-2] if len(lines) > 1 else "", "lines": len(lines),
            "status_error": status.get("error"), "lost": []}


def markdown(payload: dict) -> str:
    lines = ["Issue 55's probes through the real commands (tiny folders this script builds; "
             "2 CPU cores). Seconds: until the command exited, Python's start and fedad's "
             "imports included. Last line: what the user reads last. Lost: the finished "
             "run's files changed, or a refused command left an output folder.", "",
             "| what the user did | command | exit | s | last line | lost |",
             "|---|---|---|---|---|---|"]
    for p in payload["probes"]:
        cmd = p["command"].replace("|", "\\|")
        if len(cmd) > 90:
            cmd = cmd[:87] + "..."
        last = p["last_line"].replace("|", "\\|")
        lines.append(f"| {p['what']} | `{cmd}` | {p['exit']} | {p['seconds']} | {last} | "
                     f"{', '.join(p['lost']) or 'nothing'} |")
    slow = [p for p in payload["probes"] if p["seconds"] > 10 and "launch" not in p["what"]]
    lines += ["", f"Probes refused before launch that took over 10 s: "
              f"{', '.join(p['what'] for p in slow) or 'none'}."]
    if payload.get("launched"):
        p = payload["launched"]
        lines += ["", f"A run that fails after launch ({p['what']}): exit {p['exit']} after "
                  f"{p['seconds']} s; the console's last lines: `{p['last_line']}`; "
                  f"status.json's error: `{p['status_error']}`."]
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--launched", action="store_true",
                        help="also one run that fails after Flower's launch (~1 min)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fedad-bad-input-"))
    work.mkdir(parents=True, exist_ok=True)
    run = finished_run(work)
    before = fingerprint(run)
    results = []
    for what, cmd, leaves in probes(work, run):
        results.append(run_probe(what, cmd, leaves, run, before))
        r = results[-1]
        print(f"{r['exit']:>3} {r['seconds']:>6.1f}s  {what}: {r['last_line'][:120]}")
    payload = {"command": command_line(), "machine": machine(), "probes": results}
    if args.launched:
        payload["launched"] = launched_failure(work)
    write_results(args.out, "bad_input", payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
