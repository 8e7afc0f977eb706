"""Issue 11's sweep on real MTD, run in parts that accumulate in one sweep folder.

    python benchmarks/mtd_sweep.py --root ../shared/data/mtd --sweep DIR --part seed0
    python benchmarks/mtd_sweep.py --root ../shared/data/mtd --sweep DIR --part report

Parts (each one ``fedad-sim -m``; its jobs land in ``<sweep>/<part>-<job number>``, so
re-running a part skips the jobs that completed and runs the others again):

- ``seed0``, ``seed1``, ``seed2``: FedDyMem (the paper's method, ``variant=paper``) and
  FedAvg, alpha in {0.05, 0.1, 0.5, 1.0} x local epochs E in {1, 3, 5}, ``train.seed`` N;
  E = 1 for every alpha and method first, then E = 3, then E = 5.
- ``frozen``: PatchCore and PaDiM (one round each) at every alpha, seeds 0-2.
- ``report``: none; only the report below.

After a part, fedad-report's ``make_report`` writes the table and figures of everything in
the folder to ``--out`` (default ``benchmarks/results/mtd_sweep/``), and ``parts.md`` there
counts each part's completed runs in the folder (a part stopped mid-way included) and lists
every invocation that ran to its end with its command, wall time and commit.

The settings were fixed before any of the sweep's numbers were seen (SETTINGS below): 5
clients, Dirichlet partition seed 0, 10 rounds, evaluation after rounds 5 and 10, 128 px
(a 224 px FedDyMem run takes 817 s at E = 1 on 2 cores, benchmarks/results/speed.md, and
the sweep has 72 such runs, two thirds at E = 3 or 5), Lite0, frozen features cached on disk.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine  # noqa: E402

from fedad.evaluation.run_status import read_status  # noqa: E402
from fedad.evaluation.sweep_report import make_report  # noqa: E402

SETTINGS = ["dataset=mtd", "num_clients=5", "partition.seed=0", "train.rounds=10",
            "eval_every=5", "dataset.image_size=128", "client_cpus=2", "backbone.cache=disk"]
ALPHAS = "partition.alpha=0.05,0.1,0.5,1.0"
PARTS = {
    **{f"seed{s}": ["train.local_epochs=1,3,5", ALPHAS, "method=feddymem,fedavg",
                    f"train.seed={s}"] for s in range(3)},
    "frozen": [ALPHAS, "method=patchcore,padim", "train.seed=0,1,2"],
}


def part_command(part: str, root: Path, sweep: Path, cache: Path) -> list[str]:
    fedad_sim = str(Path(sys.executable).parent / "fedad-sim")
    return [fedad_sim, "-m", *SETTINGS, f"dataset.root={root}", f"backbone.cache_dir={cache}",
            *PARTS[part], f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={part}-"
            "${hydra.job.num}"]


def completed(sweep: Path, part: str) -> tuple[int, int]:
    """(completed, all) run folders of ``part``."""
    folders = [p for p in sweep.glob(f"{part}-*") if p.is_dir()]
    done = sum((read_status(p) or {}).get("status") == "completed" for p in folders)
    return done, len(folders)


def write_parts(out: Path, sweep: Path) -> None:
    """``parts.md``: every part's runs as found in ``sweep`` (a part stopped mid-way shows
    what completed) and every invocation logged in ``<sweep>/parts.jsonl``."""
    log = sweep / "parts.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() \
        else []
    lines = ["# MTD sweep: the parts run so far", "",
             f"Settings (fixed before the sweep's numbers were seen): `{' '.join(SETTINGS)}`.",
             "", "| part | swept | runs completed | runs in the part |", "|---|---|---|---|"]
    for part, swept in PARTS.items():
        done, started = completed(sweep, part)
        total = 1
        for arg in swept:
            total *= len(arg.split("=", 1)[1].split(","))
        lines.append(f"| {part} | `{' '.join(swept)}` | {done} (of {started} started) | "
                     f"{total} |")
    lines += ["", "Invocations that ran to their end:", "",
              "| part | runs completed | wall s | commit | command |", "|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['part']} | {e['completed']} of {e['runs']} | {e['wall']:.0f} | "
                     f"{e['commit']} | `{e['command']}` |")
    (out / "parts.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="MTD root (raw layout)")
    parser.add_argument("--sweep", required=True, type=Path, help="the sweep folder")
    parser.add_argument("--part", required=True, choices=[*PARTS, "report"])
    parser.add_argument("--cache", type=Path, default=None,
                        help="feature cache (default <sweep>/features)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mtd_sweep")
    args = parser.parse_args()
    sweep = args.sweep.resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    if args.part != "report":
        cmd = part_command(args.part, args.root.resolve(), sweep,
                           (args.cache or sweep / "features").resolve())
        print("running:", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(cmd, check=False).returncode
        done, runs = completed(sweep, args.part)
        entry = {"part": args.part, "exit_code": code, "completed": done, "runs": runs,
                 "wall": time.perf_counter() - t0, "commit": machine()["commit"],
                 "command": command_line()}
        with open(sweep / "parts.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    files = make_report(sweep, args.out)
    print(files["md"].read_text())
    write_parts(args.out, sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
