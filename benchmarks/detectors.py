"""Every registered detector on a real dataset, centralized and federated.

    python benchmarks/detectors.py --root ../shared/data/mtd [--detectors patchcore padim]
        [--work DIR] [--out DIR] [key=value ...]

Centralized: :func:`fedad.federation.centralized.run_centralized` (one client holds all training
images, no Flower). Federated: ``fedad-sim``'s launcher through Flower's simulation runtime,
5 clients, Dirichlet alpha 0.1 over product types, partition seed 0; FedDyMem runs 10
rounds x E=1 (evaluated after rounds 5 and 10), frozen-feature detectors one round. Both
hold out ``calibration.holdout`` of the training images per client for the threshold (the
same images are left out of fitting in both settings). Writes ``<name>.json`` and
``<name>.md`` (``--name``, default ``detectors``) to ``--out`` (default
``benchmarks/results/``). Finished runs in ``--work`` are reused, so an interrupted
benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from federated import breakdown  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.cli.processes import exit_on_sigterm  # noqa: E402
from fedad.cli.sim import SimConfig, launch, run_config_of  # noqa: E402
from fedad.detectors.registry import DETECTORS  # noqa: E402
from fedad.federation.centralized import run_centralized  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
ANOMALIB_PADIM = 0.936  # anomalib 2.7 PaDiM, same backbone and split (method-notes.md)


def centralized(base: SimConfig, work: Path) -> dict:
    path = work / "centralized.json"
    if path.is_file():
        return json.loads(path.read_text())
    r = run_centralized(run_config_of(base))
    # image-level-only data (no masks) has no p_auroc / pro: those keys are then absent
    row = {k: r[k] for k in ("i_auroc", "p_auroc", "pro", "upload_bytes", "summary_bytes",
                             "summary_shapes", "train_images", "holdout_images",
                             "test_images", "threshold") if k in r}
    row["seconds"] = r["seconds"]
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    return row


def federated(base: SimConfig, work: Path) -> dict:
    path = work / "federated.json"
    if path.is_file():
        return json.loads(path.read_text())
    fed = work / "federated"
    t0 = time.perf_counter()
    if launch(base, fed) != 0:
        raise RuntimeError(f"{base.detector}: the federated run failed; see {fed}")
    wall = time.perf_counter() - t0
    (run,) = list(fed.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    rounds, final = result["rounds"], result["final"]
    s = breakdown(rounds, wall)
    row = {"i_auroc": final["i_auroc"]["mean"], "i_auroc_std": final["i_auroc"]["std"],
           **{k: final[k]["mean"] for k in ("p_auroc", "pro") if final.get(k)},
           "rounds": len(rounds),
           "upload_bytes_per_client": rounds[-1]["bytes"]["received_per_client"],
           "rejected": result.get("rejected", []),
           "seconds": {"features": s["feature_extraction"], "fit": s["local_training"],
                       "merge": s["kmeans"], "scoring": s["evaluation"],
                       "framework": s["framework_overhead"], "wall": wall},
           "run_dir": str(run)}
    path.write_text(json.dumps(row, indent=2))
    return row


def cell(row: dict, key: str) -> str:
    """A metric, or ``-`` where the data has none (image-level-only sets: no masks)."""
    return f"{row[key]:.4f}" if key in row else "-"


def markdown(rows: dict, base: SimConfig) -> str:
    lines = [f"Detectors on `{base.dataset.name}` ({base.dataset.scored_size()} px, "
             f"{base.backbone.name}, {base.backbone.weights} weights). Federated: "
             f"{base.num_clients} clients, {base.partition.method} alpha "
             f"{base.partition.alpha}, partition seed {base.partition.seed}; metrics are the "
             "mean over clients of the last round. Each client holds out "
             f"{base.calibration.holdout:.0%} of its training images (threshold calibration; "
             "never fitted). Seconds: features = frozen backbone (0 when cached), fit = "
             "training/coreset/statistics, merge = server, scoring = test set (summed over "
             "clients when federated).", "",
             "| detector | setting | I-AUROC | P-AUROC | PRO | MB up / client | features s "
             "| fit s | merge s | scoring s | wall s |", "|---" * 11 + "|"]
    for name, r in rows.items():
        c, f = r["centralized"], r["federated"]
        cs, fs = c["seconds"], f["seconds"]
        lines.append(f"| {name} | centralized | {c['i_auroc']:.4f} | {cell(c, 'p_auroc')} | "
                     f"{cell(c, 'pro')} | - | {cs['features']:.1f} | {cs['fit']:.1f} | "
                     f"{cs['merge']:.1f} | {cs['scoring']:.1f} | {cs['total']:.1f} |")
        lines.append(f"| {name} | federated | {f['i_auroc']:.4f} ± {f['i_auroc_std']:.4f} | "
                     f"{cell(f, 'p_auroc')} | {cell(f, 'pro')} | "
                     f"{f['upload_bytes_per_client'] / 1e6:.2f} | {fs['features']:.1f} | "
                     f"{fs['fit']:.1f} | {fs['merge']:.1f} | {fs['scoring']:.1f} | "
                     f"{fs['wall']:.1f} |")
    lines += ["", "| detector | federated - centralized I-AUROC (target: within 0.005) |",
              "|---|---|"]
    for name, r in rows.items():
        d = r["federated"]["i_auroc"] - r["centralized"]["i_auroc"]
        lines.append(f"| {name} | {d:+.4f} {'(met)' if abs(d) <= 0.005 else '(missed)'} |")
    best = max(rows, key=lambda n: rows[n]["federated"]["i_auroc"]) if rows else None
    if best:
        b = rows[best]["federated"]
        above = "above" if b["i_auroc"] > ANOMALIB_PADIM else "not above"
        lines += ["", f"Best federated detector: **{best}**, I-AUROC {b['i_auroc']:.4f} "
                  f"(target >= 0.97: {'met' if b['i_auroc'] >= 0.97 else 'missed'}; anomalib "
                  f"PaDiM {ANOMALIB_PADIM}: {above}),"
                  + (f" P-AUROC {b['p_auroc']:.4f} (target >= 0.80: "
                     f"{'met' if b['p_auroc'] >= 0.80 else 'missed'})." if "p_auroc" in b
                     else " no pixel masks in this dataset (image level only).")]
    lines += ["", f"Command: `{command_line()}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (MTD raw layout)")
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-detectors"),
                        help="runs live here; finished ones are reused")
    parser.add_argument("--name", default="detectors",
                        help="results file name (<out>/<name>.json and .md)")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides")
    args = parser.parse_args()
    setup_logging()
    exit_on_sigterm()
    rows, configs = {}, {}
    for name in args.detectors:
        base = compose([f"dataset.name={args.dataset}",
                        f"dataset.root={Path(args.root).resolve()}", f"detector={name}",
                        "num_clients=5", "partition.alpha=0.1", "partition.seed=0",
                        "train.rounds=10", "eval_every=5", "client_cpus=2",
                        "backbone.cache=disk", "backbone.cache_dir=/tmp/fedad-featcache",
                        *args.overrides], base=SimConfig())
        work = args.work / name
        log.info("== %s: centralized", name)
        c = centralized(base, work)
        log.info("== %s: federated", name)
        f = federated(base, work)
        rows[name] = {"centralized": c, "federated": f}
        configs[name] = asdict(run_config_of(base))
        write_results(args.out, args.name, {"command": command_line(), "machine": machine(),
                                              "rows": rows, "configs": configs},
                      markdown(rows, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
