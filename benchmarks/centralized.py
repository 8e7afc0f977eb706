"""Centralized FedDyMem on a real dataset: quality and the time of each stage.

    python benchmarks/centralized.py --root ../shared/data/mtd [--out DIR] [key=value ...]

Two rows, same features (computed once, cached in memory): FedDyMem's trained head and the
bare memory bank (projection and generator off, average aggregation: the paper's Table III
row 1). Writes ``centralized.json`` (per row: ``i_auroc``, ``p_auroc``, ``pro``,
``seconds``) and ``centralized.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.overrides import compose
from fedad.detectors.feddymem.config import HeadConfig  # noqa: E402
from fedad.federation.centralized import run_centralized  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

METRICS = ("i_auroc", "p_auroc", "pro")
STAGES = ("features", "training", "bank", "scoring", "total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (MTD raw layout)")
    parser.add_argument("--dataset", default="mtd", help="dataset.name (default mtd)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides, e.g. train.rounds=5")
    args = parser.parse_args()
    setup_logging()
    base = compose([f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
                    *args.overrides])
    rows = {}
    rows["feddymem"] = run_centralized(base)
    bare = replace(base, head=HeadConfig(projection=False, generator=False),
                   train=replace(base.train, aggregation="average", rounds=0))
    rows["bank_only"] = run_centralized(bare)

    lines = [f"Centralized FedDyMem on `{args.dataset}` ({rows['feddymem']['train_images']} "
             f"train / {rows['feddymem']['test_images']} test images), backbone "
             f"{base.backbone.name} ({base.backbone.weights}), {base.dataset.scored_size()} px, "
             f"{base.train.rounds} rounds x {base.train.local_epochs} epoch(s).", "",
             "| row | " + " | ".join(METRICS) + " | " + " | ".join(f"{s} s" for s in STAGES)
             + " |", "|---" * (1 + len(METRICS) + len(STAGES)) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r.get(m, float('nan')):.4f}" for m in METRICS)
                     + " | " + " | ".join(f"{r['seconds'].get(s, 0.0):.1f}" for s in STAGES)
                     + " |")
    lines += ["", f"Command: `{command_line()}`"]
    payload = {"command": command_line(), "machine": machine(),
               "rows": rows}
    write_results(args.out, "centralized", payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
