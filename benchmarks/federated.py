"""Federated FedDyMem on a real dataset through Flower's simulation runtime.

    python benchmarks/federated.py --root ../shared/data/mtd [--out DIR] [key=value ...]

Defaults: 5 clients, Dirichlet alpha 0.1 over product types, E = 1, 10 rounds, evaluation
after rounds 5 and 10. Clients get both CPU cores each (``client_cpus=2``), so they run one
at a time and their reported stage times add up to wall time; what is left is framework
overhead (Flower, Ray, serialisation, SuperLink start-up). Writes ``federated.json`` (keys
``i_auroc``, ``p_auroc``, ``pro``, ``seconds``, ``bytes``) and ``federated.md`` to ``--out``
(default ``benchmarks/results/``); compares with ``centralized.json`` there if present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.cli.processes import exit_on_sigterm  # noqa: E402
from fedad.cli.sim import SimConfig, launch  # noqa: E402
from fedad.detectors.feddymem.head import FedDyMemHead  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402


def breakdown(rounds: list[dict], wall: float) -> dict[str, float]:
    """Seconds per stage, summed over clients and rounds; the rest of wall time is overhead."""
    s = {"feature_extraction": 0.0, "local_training": 0.0, "kmeans": 0.0, "evaluation": 0.0}
    for rec in rounds:
        tr = rec["train"]["seconds-client-sum"]
        s["feature_extraction"] += tr["seconds-features"]
        s["local_training"] += tr["seconds-train"] + tr["seconds-reduce"]
        s["kmeans"] += rec["seconds"]["aggregate"]
        ev = (rec.get("evaluate") or {}).get("seconds-client-sum", {})
        s["evaluation"] += ev.get("seconds-eval", 0.0)
        s["feature_extraction"] += ev.get("seconds-features", 0.0)
    s["framework_overhead"] = wall - sum(s.values())
    s["wall"] = wall
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (MTD raw layout)")
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None,
                        help="where the run's own outputs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides")
    args = parser.parse_args()
    setup_logging()
    exit_on_sigterm()
    base = compose([f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
                    "num_clients=5", "partition.alpha=0.1", "train.local_epochs=1",
                    "train.rounds=10", "eval_every=5", "client_cpus=2", *args.overrides],
                   base=SimConfig())
    sim = base
    work = args.work or Path(tempfile.mkdtemp(prefix="fedad-federated-"))
    t0 = time.perf_counter()
    code = launch(sim, work)
    wall = time.perf_counter() - t0
    if code != 0:
        print(f"the federated run failed; see {work}", file=sys.stderr)
        return code
    (run,) = list(work.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    rounds, final = result["rounds"], result["final"]
    bank_shape = [int(v) for v in np.load(run / "global_bank.npy").shape]
    h, w, c = bank_shape
    head_params = sum(p.numel() for p in FedDyMemHead(c, base.head).parameters())
    up = [r["bytes"]["received_per_client"] for r in rounds]
    row = {
        "i_auroc": final["i_auroc"]["mean"], "i_auroc_std": final["i_auroc"]["std"],
        "p_auroc": final.get("p_auroc", {}).get("mean"), "pro": final.get("pro", {}).get("mean"),
        "per_client": final["per_client"],
        "per_round": [{"round": r["round"], **{k: r["evaluate"][k] for k in
                                               ("i_auroc", "p_auroc", "pro")
                                               if r.get("evaluate") and k in r["evaluate"]}}
                      for r in rounds],
        "seconds": breakdown(rounds, wall),
        "bytes": {"uploaded_per_client_round": up, "sent_per_round": [r["bytes"]["sent"]
                                                                      for r in rounds],
                  "bank_float32": h * w * c * 4, "head_parameters": head_params,
                  "head_float32": head_params * 4, "bank_shape": bank_shape},
        "rejected": result.get("rejected", []),
    }
    central = None
    cpath = args.out / "centralized.json"
    if cpath.is_file():
        central = json.loads(cpath.read_text())["rows"]["feddymem"]["i_auroc"]
        row["centralized_i_auroc"] = central
    secs = row["seconds"]
    lines = [
        f"Federated FedDyMem on `{args.dataset}`: {base.num_clients} clients, "
        f"{base.partition.method} alpha {base.partition.alpha}, {base.train.rounds} rounds x "
        f"E={base.train.local_epochs}, backbone {base.backbone.name} ({base.backbone.weights}),"
        f" {base.dataset.scored_size()} px. Mean ± std over clients after the last round.", "",
        "| I-AUROC | P-AUROC | PRO | centralized I-AUROC | difference |", "|---|---|---|---|---|",
        f"| {row['i_auroc']:.4f} ± {row['i_auroc_std']:.4f} | {row['p_auroc']:.4f} | "
        f"{row['pro']:.4f} | " + (f"{central:.4f} | {row['i_auroc'] - central:+.4f} |"
                                  if central is not None else "n/a | n/a |"), "",
        "| stage | seconds | share of wall |", "|---|---|---|",
        *[f"| {k} | {v:.1f} | {v / secs['wall']:.1%} |" for k, v in secs.items()], "",
        f"Bytes uploaded per client-round: {min(up)}..{max(up)} (one {h}x{w}x{c} float32 bank "
        f"= {h * w * c * 4} B, plus the .npy header); trainable head: {head_params} parameters"
        f" = {head_params * 4} B as float32.", "",
        f"Command: `{command_line()}`",
    ]
    write_results(args.out, "federated", {"command": command_line(), "machine": machine(),
                                          "config": asdict(base),
                                          **row}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
