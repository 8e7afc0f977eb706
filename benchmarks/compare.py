"""Compare FedDyMem with the weight-exchanging baselines (the paper's Tables I/II, Fig. 7).

    python benchmarks/compare.py --root ../shared/data/mtd --seeds 0 1 2 [--out DIR]
        [--methods local fedavg fedprox scaffold fedbn fedphp apple dbe feddymem]
        [key=value ...]

Every method runs on the same partition (``partition.seed`` fixed) with the same head
architecture (``head.batch_norm=true`` for all, so FedBN has BatchNorm to keep local);
``train.seed`` takes each of ``--seeds``. A method's figure per seed is the mean over
clients after the last round; the table shows mean ± std over seeds and the bytes exchanged
per round (sent + received, measured from the payloads). Writes ``compare.json``,
``compare.md`` and ``compare.png`` (I-AUROC per round per method) to ``--out``. Runs that
reached their last round in ``--work`` are reused, so an interrupted comparison resumes;
seeds are the outer loop, so it has every method's first seeds first. Rows of methods not
in ``--methods`` are kept from the earlier ``compare.json`` when it was measured with the
same overrides and seeds (a method added later sits beside the committed ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.cli.processes import exit_on_sigterm  # noqa: E402
from fedad.cli.sim import SimConfig, launch  # noqa: E402
from fedad.evaluation.plots import plot_metric_rounds  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad.compare")

# the paper's Table I: the weight baselines, the personalised ones, FedDyMem
METHODS = ("local", "fedavg", "fedprox", "scaffold", "fedbn", "fedphp", "apple", "dbe", "rowfed",
           "feddymem")
# overrides that change where things are kept, not what is measured
WHERE = ("backbone.cache", "backbone.cache_dir", "client_cpus")
METRICS = ("i_auroc", "p_auroc", "pro")


def fmt(d: dict | None) -> str:
    return f"{d['mean']:.4f} ± {d['std']:.4f}" if d else "n/a"


def measured(base: list[str]) -> dict[str, str]:
    """The overrides that decide the numbers (``base`` minus where things are kept)."""
    pairs = dict(item.split("=", 1) for item in base)
    return {k: v for k, v in pairs.items() if k not in WHERE}


def earlier_rows(path: Path, base: list[str], seeds: list[int], methods: list[str]
                 ) -> tuple[dict, dict]:
    """Rows and curves of methods not run now from an earlier ``compare.json`` measured
    with the same overrides and seeds (so a new method is added beside the committed ones
    without re-running them); nothing when the setting differs."""
    if not path.is_file():
        return {}, {}
    old = json.loads(path.read_text())
    same = measured(old.get("base", [])) == measured(base) and old.get("seeds", seeds) == seeds
    if not same:
        log.info("%s was measured with other overrides or seeds: not kept", path)
        return {}, {}
    keep = [m for m in old.get("rows", {}) if m not in methods]
    return ({m: old["rows"][m] for m in keep},
            {m: old["curves"][m] for m in keep if m in old.get("curves", {})})


def run_one(base: list[str], method: str, seed: int, work: Path) -> dict:
    """One run's ``rounds.json``; a run in ``work`` that reached its last round is reused
    (resume), an unfinished one is run again."""
    sim = compose([*base, f"method={method}", f"train.seed={seed}"], base=SimConfig())
    out = work / f"{method}-seed{seed}"
    for path in sorted(out.glob("run-*/rounds.json")):
        result = json.loads(path.read_text())
        if result["rounds"] and result["rounds"][-1]["round"] == sim.train.rounds:
            log.info("reusing %s", path)
            return result
    before = set(out.glob("run-*"))
    start = time.perf_counter()
    if launch(sim, out) != 0:
        raise RuntimeError(f"{method} seed {seed} failed; see {out}")
    (run,) = set(out.glob("run-*")) - before
    log.info("%s seed %d: %.0f s", method, seed, time.perf_counter() - start)
    return json.loads((run / "rounds.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every run")
    args = parser.parse_args()
    setup_logging()
    exit_on_sigterm()
    base = [f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
            "num_clients=5", "partition.alpha=0.1", "partition.seed=0", "train.local_epochs=1",
            "train.rounds=10", "eval_every=1", "head.batch_norm=true", "client_cpus=2",
            *args.overrides]
    base = list({item.split("=", 1)[0]: item for item in base}.values())  # last one wins
    work = args.work or Path(tempfile.mkdtemp(prefix="fedad-compare-"))
    runs: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    for s in args.seeds:  # seed-major: an interrupted comparison has every method's early seeds
        for m in args.methods:
            runs[m][s] = run_one(base, m, s, work)

    rows, curves = {}, {}
    for m, by_seed in runs.items():
        finals = [r["final"] for r in by_seed.values()]
        row = {k: {"mean": float(np.mean([f[k]["mean"] for f in finals])),
                   "std": float(np.std([f[k]["mean"] for f in finals]))}
               for k in METRICS if all(k in f for f in finals)}
        per_round = [[rec["bytes"]["sent"] + rec["bytes"]["received"]
                      for rec in r["rounds"] if rec["round"] > 0] for r in by_seed.values()]
        row["bytes_per_round"] = float(np.mean([np.mean(b) for b in per_round]))
        # the metric loss (Eq. 12) in the last round: how far each method trained its heads
        losses = [r["rounds"][-1]["train"]["loss"]["mean"] for r in by_seed.values()]
        row["final_loss"] = {"mean": float(np.mean(losses)), "std": float(np.std(losses))}
        row["seeds"] = {str(s): r["final"] for s, r in by_seed.items()}
        rows[m] = row
        ev = [[(rec["round"], rec["evaluate"]["i_auroc"]["mean"]) for rec in r["rounds"]
               if rec.get("evaluate")] for r in by_seed.values()]
        rounds = [x for x, _ in ev[0]]
        vals = np.array([[v for _, v in e] for e in ev])
        curves[m] = {"rounds": rounds, "mean": vals.mean(0).tolist(), "std": vals.std(0).tolist()}
    kept_rows, kept_curves = earlier_rows(args.out / "compare.json", base, args.seeds,
                                          args.methods)
    rows = {m: rows.get(m) or kept_rows[m] for m in METHODS if m in rows or m in kept_rows}
    curves = {m: curves.get(m) or kept_curves[m] for m in rows if m in curves or m in kept_curves}
    args.out.mkdir(parents=True, exist_ok=True)
    plot_metric_rounds({"I-AUROC": curves}, args.out / "compare.png",
                       title="I-AUROC per round, mean ± std over seeds")
    lines = [f"Methods on `{args.dataset}`, seeds {args.seeds}; overrides: `{' '.join(base)}`.",
             "", "| method | I-AUROC | P-AUROC | PRO | MB exchanged / round | last-round loss |",
             "|---|---|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {fmt(r.get('i_auroc'))} | {fmt(r.get('p_auroc'))} | "
                     f"{fmt(r.get('pro'))} | {r['bytes_per_round'] / 1e6:.2f} | "
                     f"{fmt(r['final_loss'])} |")
    lead = max(rows, key=lambda m: rows[m]["i_auroc"]["mean"])
    lines += ["", f"Highest I-AUROC: {lead}", "",
              f"Command: `{command_line()}`"]
    write_results(args.out, "compare", {"command": command_line(), "machine": machine(),
                                        "base": base, "seeds": args.seeds, "rows": rows,
                                        "curves": curves},
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
