"""Faults injected into real Flower runs, each against a clean run (issue 12).

    python benchmarks/reliability.py [--rounds 5] [--out DIR] [--work DIR] [key=value ...]

On the embedded textures (5 clients, Dirichlet alpha 0.1), FedDyMem as the paper describes
it and FedAvg, each scenario is one run: clean; clean with robust aggregation on (does it
drop honest clients? For weights it also swaps FedAvg's example-weighted mean for a
trimmed mean); client 0 uploads NaNs and client 1 a wrong-shaped bank; client 2 fails in
round 2; the run SIGKILLed after round 2 and resumed; client 3 uploads its bank
shifted far away (robust off, then on); FedAvg with client 3's weights scaled by 100 (robust
off, then on). For each: did the run complete, was anything lost (every round recorded,
every client evaluated, the global state finite), who was left out, and the final I-AUROC /
P-AUROC against the clean run of the same method, and, for runs with robust aggregation,
against the clean run with it (same aggregation rule: what the fault alone changed).
Writes ``reliability.json`` and ``reliability.md``. Finished runs in ``--work`` are
reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.crash import run_and_kill  # noqa: E402
from fedad.cli.overrides import compose  # noqa: E402
from fedad.cli.processes import exit_on_sigterm  # noqa: E402
from fedad.cli.sim import SimConfig, launch  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad.reliability")

# name, method, extra overrides, what is injected (for the table)
SCENARIOS = [
    ("clean", "feddymem", [], "nothing"),
    ("clean-robust", "feddymem", ["robust.enabled=true"], "nothing, robust aggregation on"),
    ("bad-uploads", "feddymem", ["faults=[0:nan,1:shape]"],
     "client 0 uploads NaNs, client 1 a wrong-shaped bank, every round"),
    ("client-fails", "feddymem", ["faults=[2:raise@2]"], "client 2 raises in round 2"),
    ("killed-resumed", "feddymem", [], "SIGKILL after round 2, then resume=<run dir>"),
    ("poisoned-bank", "feddymem", ["faults=[3:shift]"],
     "client 3 uploads its bank + 100, robust off"),
    ("poisoned-bank-robust", "feddymem", ["faults=[3:shift]", "robust.enabled=true"],
     "client 3 uploads its bank + 100, robust on"),
    ("clean", "fedavg", [], "nothing"),
    ("clean-robust", "fedavg", ["robust.enabled=true"], "nothing, robust aggregation on"),
    ("scaled-weights", "fedavg", ["faults=[3:scale]"],
     "client 3 uploads its weights x 100, robust off"),
    ("scaled-weights-robust", "fedavg", ["faults=[3:scale]", "robust.enabled=true"],
     "client 3 uploads its weights x 100, robust on"),
]


def finished(folder: Path, rounds: int) -> Path | None:
    """A run in ``folder`` that recorded its last round (for reuse), else ``None``."""
    for path in sorted(folder.glob("run-*/rounds.json")):
        result = json.loads(path.read_text())
        if result["rounds"] and result["rounds"][-1]["round"] == rounds:
            return path.parent
    return None


def run_scenario(base: list[str], name: str, method: str, extra: list[str], rounds: int,
                 work: Path) -> tuple[int, Path | None]:
    """(exit code, run folder) of one scenario; a finished run in ``work`` is reused."""
    folder = work / f"{method}-{name}"
    overrides = [*base, f"method={method}", *extra]
    run = finished(folder, rounds)
    if run is not None:
        log.info("reusing %s", run)
        return 0, run
    if name == "killed-resumed":
        killed = run_and_kill(overrides, folder / "killed", after_round=2)
        sim = compose([*overrides, f"resume={killed}"], base=SimConfig())
        return launch(sim, folder / "resume"), killed
    code = launch(compose(overrides, base=SimConfig()), folder)
    runs = sorted(folder.glob("run-*"))
    return code, runs[-1] if runs else None


def assess(code: int, run: Path | None, rounds: int, clients: int) -> dict:
    """What a scenario's run shows: completed, lost (what is missing), left out, metrics."""
    if code != 0 or run is None or not (run / "rounds.json").is_file():
        return {"completed": False, "lost": "the run did not complete"}
    result = json.loads((run / "rounds.json").read_text())
    lost = []
    recorded = [r["round"] for r in result["rounds"]]
    if not recorded or recorded[-1] != rounds or len(set(recorded)) != len(recorded):
        lost.append(f"rounds recorded {recorded}")
    per_client = result["final"].get("per_client", {})
    if len(per_client) != clients:
        lost.append(f"{clients - len(per_client)} client(s) not evaluated at the end")
    bank = run / "global_bank.npy"
    if bank.is_file() and not np.isfinite(np.load(bank)).all():
        lost.append("non-finite global bank")
    dropped = sorted({d for e in result.get("robust", []) for d in e["dropped"]})
    return {
        "completed": True, "lost": "; ".join(lost) or "none",
        "rejected_per_client": result.get("rejected_per_client", {}),
        "robust_dropped": dropped,
        "i_auroc": result["final"]["i_auroc"]["mean"],
        "p_auroc": result["final"]["p_auroc"]["mean"],
        "run": str(run),
    }


def short(client: str) -> str:
    """``client node N (partition p)`` -> ``p``."""
    return client.rsplit("partition ", 1)[-1].rstrip(")") if "partition" in client else client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every run")
    args = parser.parse_args()
    setup_logging()
    exit_on_sigterm()
    base = [f"num_clients={args.clients}", "partition.alpha=0.1", "partition.seed=0",
            f"train.rounds={args.rounds}", "eval_every=0", "examples=0", *args.overrides]
    work = (args.work or Path(tempfile.mkdtemp(prefix="fedad-reliability-"))).resolve()
    rows = []
    for name, method, extra, what in SCENARIOS:
        if args.only and name not in args.only:
            continue
        code, run = run_scenario(base, name, method, extra, args.rounds, work)
        rows.append({"scenario": name, "method": method, "injected": what,
                     "overrides": extra, **assess(code, run, args.rounds, args.clients)})
    clean = {(r["method"], "robust.enabled=true" in r["overrides"]): r for r in rows
             if r["scenario"] in ("clean", "clean-robust") and r["completed"]}
    lines = [f"Faults injected into Flower simulation runs: embedded textures, "
             f"{args.clients} clients, Dirichlet alpha 0.1, {args.rounds} rounds; base "
             f"overrides `{' '.join(base)}`. Left out = rejected uploads per client "
             "(partition: count); dropped = robust aggregation's outliers. Metrics after the "
             "last round, mean over clients; change against the clean run of the same method "
             "(robust off) and against the clean run with the same aggregation rule.",
             "", "| method | scenario | injected | completed | data lost | left out | dropped "
             "| I-AUROC | change | change, same rule | P-AUROC | change |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["completed"]:
            lines.append(f"| {r['method']} | {r['scenario']} | {r['injected']} | no | "
                         f"{r['lost']} | | | | | | | |")
            continue
        ref = clean.get((r["method"], False))
        same = clean.get((r["method"], "robust.enabled=true" in r["overrides"]))
        delta = {k: (f"{r[k] - ref[k]:+.4f}" if ref else "n/a") for k in ("i_auroc", "p_auroc")}
        delta_same = f"{r['i_auroc'] - same['i_auroc']:+.4f}" if same else "n/a"
        left = ", ".join(f"{short(c)}: {n}" for c, n in sorted(r["rejected_per_client"].items()))
        dropped = ", ".join(short(c) for c in r["robust_dropped"])
        lines.append(f"| {r['method']} | {r['scenario']} | {r['injected']} | yes | {r['lost']} "
                     f"| {left or '-'} | {dropped or '-'} | {r['i_auroc']:.4f} | "
                     f"{delta['i_auroc']} | {delta_same} | {r['p_auroc']:.4f} | "
                     f"{delta['p_auroc']} |")
    lines += ["", f"Command: `{command_line()}`"]
    write_results(args.out, "reliability", {"command": command_line(), "machine": machine(),
                                            "base": base, "rows": rows}, "\n".join(lines))
    return 0 if all(r["completed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
