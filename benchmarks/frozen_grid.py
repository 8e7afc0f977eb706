"""The frozen detectors over a grid of backbones or input sizes: quality, time and memory
(issue 54 items 1 and 2).

    python benchmarks/frozen_grid.py backbones --root ../shared/data/mtd [--detectors ...]
        [--only NAME ...] [--work DIR] [--out DIR] [key=value ...]
    python benchmarks/frozen_grid.py resolution --root ../shared/data/mtd ...

Every cell (a grid value x a detector x a setting) runs in a child process of its own, so
its peak resident memory (``ru_maxrss``) is its own: *centralized* (one site holds every
training image, :func:`fedad.federation.centralized.run_centralized`) and *federated* (5
sites, Dirichlet alpha 0.1, partition seed 0, the engine's uploads, checks and exact merge
in one process, ``_inprocess.run_in_process``: the five sites' memory adds up in it). Both
hold out ``calibration.holdout`` of each site's training images; the federated run scores
them, with one synthetic defect each, as the validation split.

The default is chosen per dataset on validation by a rule fixed here, before any test
number is read: the grid value with the highest federated validation score of the best
detector on validation; a value within :data:`SLACK` of it that costs less time per image
wins the tie. Finished cells in ``--work`` are reused. Writes ``<grid>.{json,md}`` to
``--out`` (default ``benchmarks/results/``). Runs on image-level-only data (I-AUROC and the
image-level validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

log = logging.getLogger("fedad")
SLACK = 0.002  # validation score a cheaper grid value may lose and still be chosen
DETECTORS = ("padim", "patchcore")
GRIDS: dict[str, dict[str, list[str]]] = {
    "backbones": {"Lite0": ["backbone=lite0"], "Lite1": ["backbone=lite1"],
                  "Lite2": ["backbone=lite2"]},
    "resolution": {"224 px": ["dataset.image_size=224"], "320 px": ["dataset.image_size=320"],
                   "448 px": ["dataset.image_size=448"]},
}
SETTINGS = ("centralized", "federated")
AXIS = {"backbones": "backbone", "resolution": "input size"}  # a grid's column header


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cell(overrides: list[str], setting: str, out: Path) -> None:
    """One run, in this (child) process; its row goes to ``out``."""
    from fedad.cli.overrides import compose
    from fedad.progress import setup_logging

    setup_logging()
    cfg = compose(overrides)
    t0 = time.perf_counter()
    if setting == "centralized":
        from fedad.federation.centralized import run_centralized

        r = run_centralized(cfg)
        row = {k: r[k] for k in ("i_auroc", "p_auroc", "pro", "upload_bytes", "test_images",
                                 "train_images") if k in r}
        s = r["seconds"]
    else:
        from _inprocess import run_in_process

        r = run_in_process(cfg, also_last=False)
        row = {**{k: v for k, v in r["test"].items() if k in ("i_auroc", "p_auroc", "pro",
                                                              "i_auroc_std")},
               "val_score": r["history"][-1]["val_score"],
               "upload_bytes": r["upload_bytes_per_client"]}
        s = r["seconds"]
    row["seconds"] = {k: float(v) for k, v in s.items()}
    row["wall"] = time.perf_counter() - t0
    if setting == "centralized":
        row["backbone_ms"] = backbone_ms(cfg)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["overrides"] = overrides
    out.write_text(json.dumps(row, indent=1))


def backbone_ms(cfg, batch: int = 16, repeats: int = 3) -> float:
    """The frozen backbone's forward time per image at the run's input size (ms; the best
    of ``repeats`` batches of ``batch``, after one warm-up batch)."""
    import torch

    from fedad.detectors.registry import feature_config, resolve
    from fedad.federation.site_data import extractor_for

    cfg = feature_config(resolve(cfg))
    extractor, _ = extractor_for(cfg)
    size = cfg.dataset.scored_size()
    x = torch.randn(batch, 3, size, size)
    best = float("inf")
    with torch.no_grad():
        for i in range(repeats + 1):
            t = time.perf_counter()
            extractor(x)
            if i:
                best = min(best, time.perf_counter() - t)
    return 1000 * best / batch


def run_cell(grid: str, work: Path, overrides: list[str], setting: str) -> dict:
    path = work / f"{setting}.json"
    if path.is_file() and json.loads(path.read_text()).get("overrides") == overrides:
        return json.loads(path.read_text())
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, grid, "--cell", setting, "--cell-out", str(path),
           *overrides]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{work.name} {setting}: the run failed (exit {done.returncode}); "
                           f"rerun: {' '.join(cmd)}")
    return json.loads(path.read_text())


def ms_per_image(c: dict) -> float:
    """Centralized time per test image in ms: the backbone's forward pass plus the
    detector's scoring (the test set's scoring seconds over its images)."""
    return c["backbone_ms"] + 1000 * c["seconds"]["scoring"] / c["test_images"]


def choose(rows: dict) -> tuple[str, str] | None:
    """The rule (module docstring): (grid value, detector) or None before any run."""
    done = [(v, d) for v, per in rows.items() for d, r in per.items()
            if "federated" in r and "centralized" in r]
    if not done:
        return None
    best_det = max({d for _, d in done},
                   key=lambda d: max(rows[v][d]["federated"]["val_score"]
                                     for v, dd in done if dd == d))
    cand = [(v, rows[v][best_det]) for v, d in done if d == best_det]
    top = max(r["federated"]["val_score"] for _, r in cand)
    ok = [(v, r) for v, r in cand if r["federated"]["val_score"] >= top - SLACK]
    return min(ok, key=lambda vr: ms_per_image(vr[1]["centralized"]))[0], best_det


def fmt(r: dict, key: str) -> str:
    return f"{r[key]:.4f}" if key in r else "n/a"


def markdown(payload: dict) -> str:
    grid, rows = payload["grid"], payload["rows"]
    lines = [f"Frozen detectors on `{payload['dataset']}` over {grid} (2 CPU cores). "
             "Centralized: one site with every training image. Federated: 5 sites, "
             "Dirichlet alpha 0.1, partition seed 0, in one process (the five sites' memory "
             "adds up there). Validation: held-out normals with one synthetic defect each, "
             "(image + pixel AUROC) / 2, federated. ms / image: the backbone's forward pass "
             "(batch 16) plus the detector's scoring of the test set, per image. Peak MB: "
             "the process's peak resident memory.",
             "", "| " + AXIS[grid] + " | detector | setting | validation | I-AUROC | P-AUROC | PRO "
             "| MB up / site | ms / image | wall s | peak MB |", "|---" * 11 + "|"]
    for value, per in rows.items():
        for det, r in per.items():
            for setting in SETTINGS:
                if setting not in r:
                    continue
                x = r[setting]
                val = f"{x['val_score']:.4f}" if "val_score" in x else "-"
                up = f"{x['upload_bytes'] / 1e6:.1f}" if setting == "federated" else "-"
                ms = f"{ms_per_image(x):.0f}" if setting == "centralized" else "-"
                lines.append(f"| {value} | {det} | {setting} | {val} | {fmt(x, 'i_auroc')} | "
                             f"{fmt(x, 'p_auroc')} | {fmt(x, 'pro')} | {up} | {ms} | "
                             f"{x['wall']:.0f} | {x['peak_rss_mb']:.0f} |")
    chosen = choose(rows)
    lines += ["", f"Rule, fixed before any run: the {AXIS[grid]} with the best federated "
              f"validation score of the detector best on validation; a value within {SLACK} "
              "of it that scores faster per image wins. Chosen: "
              + (f"**{chosen[0]}** ({chosen[1]})." if chosen else "n/a.")]
    for note in payload.get("notes", []):
        lines += ["", note]
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=list(GRIDS))
    parser.add_argument("--root", help="dataset root")
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--only", nargs="*", default=None, help="grid values to run")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-frozen-grid"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cell", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every cell")
    args = parser.parse_intermixed_args()
    if args.cell:
        cell(args.overrides, args.cell, args.cell_out)
        return 0
    if args.root is None:
        parser.error("--root is required")
    from fedad.progress import setup_logging

    setup_logging()
    base = [f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
            "num_clients=5", "partition.alpha=0.1", "partition.seed=0", "train.rounds=1",
            "backbone.cache=memory", *args.overrides]
    out_json = args.out / f"{args.grid}.json"
    payload = {"grid": args.grid, "dataset": args.dataset, "command": command_line(),
               "machine": machine(), "rows": {}}
    if out_json.is_file():  # finished rows and the notes written beside them are kept
        old = json.loads(out_json.read_text())
        payload["rows"], payload["notes"] = old.get("rows", {}), old.get("notes", [])
    for value, extra in GRIDS[args.grid].items():
        if args.only is not None and value not in args.only:
            continue
        for det in args.detectors:
            for setting in args.settings:
                log.info("== %s, %s, %s", value, det, setting)
                r = run_cell(args.grid, args.work / args.grid / slug(value) / det,
                             [*base, f"detector={det}", *extra], setting)
                payload["rows"].setdefault(value, {}).setdefault(det, {})[setting] = r
                write_results(args.out, args.grid, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
