"""FedDyMem ablation in the shape of the paper's Table III, for the paper's method and for
the switch set that the validation split chose.

    python benchmarks/feddymem_ablation.py --root ../shared/data/mtd [--work DIR]
        [--out DIR] [--name feddymem_ablation] [--skip-faithful] [key=value ...]

Two stages, both federated (5 clients, Dirichlet alpha 0.1 over product types, partition
seed 0), 224 px, Lite0, in one process (``_inprocess.py``: the same fit / validate / merge
calls as the Flower apps, without Ray):

1. **Selection**: each candidate switch set in ``CANDIDATES`` runs ``--select-rounds``
   rounds; the set of best *validation score* is chosen: (image AUROC + pixel AUROC) / 2
   on held-out normal training images and one synthetic defect on each
   (``fedad/data/synthetic.py``), averaged over clients weighted by their validation
   images. Test numbers are
   recorded for the table but play no part in the choice.
2. **Ablation** (Table III rows: bank only, + projection, + generator, + K-means) for the
   faithful default and the chosen set, ``train.rounds`` rounds each; within a run the
   round kept is the one of best validation score.

Finished runs in ``--work`` are reused, so an interrupted benchmark resumes. Writes
``<name>.json`` and ``<name>.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from _inprocess import run_in_process  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")

# What every switch set shares, fixed a priori: PatchCore's layers (strides 8/16, Roth et
# al. 2022), a bank of 3,136 features (the paper's H*W at 224 px, so about the paper's
# upload), the nearest-distance score of PatchCore ([51], one of the two score functions
# the paper cites), a coreset memory-reduce and merge, and a head that starts as the
# frozen features (head.init=identity) so that training refines the bank-only detector.
SET_BASE = ["backbone.layers=[2,3]", "feddymem.reduce=coreset", "feddymem.aggregation=coreset",
            "feddymem.bank_size=3136", "score.mode=nearest", "head.init=identity"]
CANDIDATES: dict[str, list[str]] = {
    "set, head off": [*SET_BASE, "head.projection=false", "head.generator=false"],
    "set + head": SET_BASE,
    "set + head + repulsion": [*SET_BASE, "feddymem.repulsion=1.0"],
    "set + head, lr 1e-4": [*SET_BASE, "train.lr=0.0001"],
    "set + head, no rEMA": [*SET_BASE, "feddymem.rema=false"],
    "set + head, th = bank spacing": [*SET_BASE, "feddymem.threshold_scale=1.0"],
    "set + head, no rEMA, th = bank spacing": [*SET_BASE, "feddymem.rema=false",
                                               "feddymem.threshold_scale=1.0"],
}
# Table III: each row adds one component; the last adds the server's K-means (Alg. 3).
FAITHFUL_ROWS: dict[str, list[str]] = {
    "bank only": ["head.projection=false", "head.generator=false",
                  "feddymem.aggregation=average"],
    "+ projection": ["head.generator=false", "feddymem.aggregation=average"],
    "+ generator": ["feddymem.aggregation=average"],
    "+ K-means (paper's FedDyMem)": [],
}


def switch_rows(chosen: list[str]) -> dict[str, list[str]]:
    """Table III's rows for a set bank: averaging positions has no meaning for a set, so
    the first three rows merge by the chosen set's own server step and the last row
    replaces it by the paper's K-means (Alg. 3)."""
    rest = [o for o in chosen if not o.startswith(("head.projection", "head.generator"))]
    return {
        "bank only": [*rest, "head.projection=false", "head.generator=false"],
        "+ projection": [*rest, "head.generator=false"],
        "+ generator": rest,
        "+ K-means (Alg. 3) as the server step": [*rest, "feddymem.aggregation=kmeans"],
    }


def run(work: Path, key: str, base: list[str], overrides: list[str], pixels: bool) -> dict:
    path = work / f"{key}.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("overrides") == overrides:  # the same run: reuse it
            return done
    log.info("== %s: %s", key, " ".join(overrides))
    cfg = compose([*base, *overrides])
    r = run_in_process(cfg, pixels=pixels)
    r["overrides"] = overrides
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1))
    return r


def _fmt(m: dict | None, key: str) -> str:
    return "-" if not m or key not in m else f"{m[key]:.4f}"


def markdown(select: dict, chosen: str, tables: dict, args) -> str:
    lines = ["FedDyMem ablation on MTD (DifferNet split), 224 px, Lite0, federated: 5 clients, "
             "Dirichlet alpha 0.1, partition seed 0, one process (same calls as the Flower "
             "apps). Validation = each client's held-out normal training images plus one "
             "synthetic defect on each; every choice below (switch set, round kept) is its "
             "best validation score: (image AUROC + pixel AUROC) / 2 on that split, "
             "averaged over clients weighted by their validation images. Synthetic defects "
             "are blended in at calibration.synthetic_strength (default 0.2). Test metrics "
             "are means over clients.", "",
             f"## Selection ({args.select_rounds} rounds each)", "",
             "| candidate | validation score per round | round kept | test I-AUROC (kept) "
             "| test I-AUROC (last round) |", "|---|---|---|---|---|"]
    for name, r in select.items():
        curve = ", ".join(f"{h['val_score']:.4f}" for h in r["history"])
        mark = " **(chosen)**" if name == chosen else ""
        lines.append(f"| {name}{mark} | {curve} | {r['chosen_round']} | "
                     f"{r['test']['i_auroc']:.4f} | {_fmt(r.get('test_last_round'), 'i_auroc')} |")
    for title, rows in tables.items():
        lines += ["", f"## {title}", "",
                  "| row | validation score | round kept / last | I-AUROC (kept) | P-AUROC | PRO "
                  "| I-AUROC (last round) | MB up/client |", "|---" * 8 + "|"]
        prev = None
        for name, r in rows.items():
            t, last = r["test"], r.get("test_last_round")
            v = max(h["val_score"] for h in r["history"])
            trend = ("" if prev is None else " (up)" if t["i_auroc"] > prev
                     else " (same)" if t["i_auroc"] == prev else " (down)")
            prev = t["i_auroc"]
            lines.append(f"| {name} | {v:.4f} | {r['chosen_round']} / {r['last_round']} | "
                         f"{t['i_auroc']:.4f} ± {t['i_auroc_std']:.4f}{trend} | "
                         f"{_fmt(t, 'p_auroc')} | {_fmt(t, 'pro')} | "
                         f"{_fmt(last, 'i_auroc')} | "
                         f"{r['upload_bytes_per_client'] / 1e6:.2f} |")
    lines += ["", f"Command: `{command_line()}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="MTD root (raw layout)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-ablation"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="feddymem_ablation")
    parser.add_argument("--select-rounds", type=int, default=3)
    parser.add_argument("--skip-faithful", action="store_true",
                        help="only the selection and the chosen set's rows")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every run")
    args = parser.parse_args()
    setup_logging()
    base = ["dataset.name=mtd", f"dataset.root={Path(args.root).resolve()}",
            "num_clients=5", "partition.alpha=0.1", "partition.seed=0", "train.rounds=10",
            "backbone.cache=disk", "backbone.cache_dir=/tmp/fedad-featcache", *args.overrides]
    select = {name: run(args.work, f"select-{i}", base,
                        [*ov, f"train.rounds={args.select_rounds}"], pixels=False)
              for i, (name, ov) in enumerate(CANDIDATES.items())}
    chosen = max(select, key=lambda n: max(h["val_score"] for h in select[n]["history"]))
    log.info("chosen on validation: %s", chosen)
    tables: dict[str, dict] = {}
    groups = {f"Best switch set ({chosen})": ("switch", switch_rows(CANDIDATES[chosen]))}
    if not args.skip_faithful:
        groups = {"Paper's method (faithful default)": ("faithful", FAITHFUL_ROWS), **groups}
    payload = {"command": command_line(), "machine": machine(), "chosen": chosen,
               "candidates": CANDIDATES, "select": select, "tables": tables}
    for title, (prefix, rows) in groups.items():
        tables[title] = {}
        for i, (name, ov) in enumerate(rows.items()):
            tables[title][name] = run(args.work, f"{prefix}-{i}", base, ov, pixels=True)
            write_results(args.out, args.name, payload, markdown(select, chosen, tables, args))
    write_results(args.out, args.name, payload, markdown(select, chosen, tables, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
