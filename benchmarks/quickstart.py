"""The wall time of the README's command 1 run (``fedad-sim``, every default), by stage.

    python benchmarks/quickstart.py [--repeats 1] [--out DIR] [key=value ...]

The install is warm (this venv); the run is a fresh process in a fresh folder, as a user
starts it: ``fedad-sim`` next to this interpreter, with the given overrides (none: the
quickstart itself). Each output line is stamped on arrival; the stages are cut at the lines
the run prints (SuperLink up, the ServerApp's first line, the start-up data check done, each
round's summary) and the rounds are split into train, aggregate and evaluate from
``rounds.json``. Writes ``quickstart.{json,md}`` to ``--out`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

TARGET = 180.0  # seconds (issue: the quickstart finishes in at most 3 minutes)
# (stage, the text of the line that ends it, whether its last such line does), in the
# order the run prints them
MARKS = (("start: SuperLink, flwr run, the app installed", "fedad feddymem: results in", False),
         ("ServerApp start", " rounds 0..", False),
         ("start-up data check", "start-up data check: ", True))  # its last progress line


def timed_run(overrides: list[str], folder: Path) -> dict:
    """One ``fedad-sim`` run in ``folder``: its stages in seconds and its final metrics."""
    exe = Path(sys.executable).with_name("fedad-sim")
    t0 = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen([str(exe), *overrides], cwd=folder, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))
    wall = time.perf_counter() - t0
    tail = "\n".join(s for _, s in lines[-20:])  # the folder goes with the run
    if proc.returncode != 0:
        raise SystemExit(f"fedad-sim exited with {proc.returncode}; its last lines:\n{tail}")

    def when(text: str, last: bool) -> float:
        """When the first (``last``: the last) line with ``text`` came."""
        hits = [t for t, s in lines if text in s]
        if not hits:
            raise SystemExit(f"no line with {text!r} in the output; its last lines:\n{tail}")
        return hits[-1] if last else hits[0]

    (run,) = sorted(folder.glob("outputs/*/*/run-*"))
    result = json.loads((run / "rounds.json").read_text())
    stages, last = {}, 0.0
    for name, text, last_line in MARKS:
        t = when(text, last_line)
        stages[name] = t - last
        last = t
    rounds = result["rounds"]
    end_rounds = [t for t, s in lines if f"[round {rounds[-1]['round']}/" in s][-1]
    split = {"rounds: train": sum(r["seconds"]["train_exchange"] for r in rounds),
             "rounds: aggregate": sum(r["seconds"]["aggregate"] for r in rounds),
             "rounds: evaluate": sum(r["seconds"].get("evaluate_exchange", 0.0)
                                     for r in rounds)}
    split["rounds: the rest (logging, checkpoint)"] = end_rounds - last - sum(split.values())
    stages.update(split)
    stages["end: final table, plots, processes stopped"] = wall - end_rounds
    final = result["final"]
    cfg = json.loads((run / "config.json").read_text())
    return {"wall_seconds": wall, "stages": stages,
            "evaluated_rounds": [r["round"] for r in rounds if r.get("evaluate")],
            "image_size": cfg["dataset"]["image_size"],
            "final": {k: final[k]["mean"] for k in ("i_auroc", "p_auroc", "pro") if k in final}}


def markdown(res: dict) -> str:
    runs = res["runs"]
    best = min(runs, key=lambda r: r["wall_seconds"])
    verdict = "met" if max(r["wall_seconds"] for r in runs) <= TARGET else "MISSED"
    md = ["# Quickstart: README command 1's run", "",
          f"`{' '.join(['fedad-sim', *res['overrides']])}`, a fresh process "
          "in a fresh folder, the install warm. Wall time per run: "
          + ", ".join(f"{r['wall_seconds']:.0f} s" for r in runs)
          + f" (target <= {TARGET:.0f} s: {verdict}). Images at {best['image_size']} px; "
          f"evaluated after rounds {', '.join(map(str, best['evaluated_rounds']))}. Final "
          + ", ".join(f"{k} {v:.3f}" for k, v in best["final"].items()) + ".", "",
          "Stages of the fastest run:", "", "| stage | seconds | share |", "|---|---|---|"]
    md += [f"| {k} | {v:.1f} | {v / best['wall_seconds']:.0%} |"
           for k, v in best["stages"].items()]
    md += [f"| total | {best['wall_seconds']:.1f} | |", "",
           f"Command: `{res['command']}`", ""]
    return "\n".join(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="fedad-quickstart-") as tmp:
            runs.append(timed_run(args.overrides, Path(tmp)))
        print(f"run {i}: {runs[-1]['wall_seconds']:.1f} s", flush=True)
    res = {"overrides": args.overrides, "runs": runs, "target_seconds": TARGET,
           "command": command_line(), "machine": machine()}
    write_results(args.out, "quickstart", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
