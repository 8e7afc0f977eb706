"""``fedad-centralized``: any detector on all training data in one process (no Flower), the
quality reference for federated runs.

Usage::

    fedad-centralized                                    # FedDyMem, embedded textures
    fedad-centralized detector=patchcore dataset.name=mtd dataset.root=/abs/mtd
    fedad-centralized dataset.name=mtd dataset.root=/abs/mtd train.rounds=10 output_dir=runs/mtd
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedad.cli.overrides import compose
from fedad.errors import FedadError
from fedad.federation.centralized import run_centralized
from fedad.progress import setup_logging


def format_table(result: dict) -> str:
    """A short Markdown table of the metrics and stage times."""
    keys = [k for k in ("i_auroc", "p_auroc", "pro", "i_f1_max", "p_f1_max") if k in result]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
             "| " + " | ".join(f"{result[k]:.4f}" for k in keys) + " |", ""]
    secs = result["seconds"]
    lines += ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in secs.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedad-centralized",
        description="Centralized run of a detector (detector=feddymem|patchcore|padim): fit "
                    "on all training data, score the test set. Options are key=value "
                    "overrides of RunConfig.",
    )
    parser.add_argument("overrides", nargs="*", help="e.g. dataset.name=mtd dataset.root=/abs/mtd")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    setup_logging(not args.quiet)
    try:
        cfg = compose(args.overrides)
        out = Path(cfg.output_dir) / "centralized" / time.strftime("%Y%m%d-%H%M%S")
        result = run_centralized(cfg, out)
    except FedadError as exc:
        print(f"fedad-centralized: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
