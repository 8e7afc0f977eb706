"""One table from a sweep folder (``fedad-sim -m ...``): mean ± std over seeds for each
method x alpha x local epochs (and any other key the sweep varied), as Markdown, CSV and
JSON, and the figures of the paper's Fig. 7 (metric per round) and Fig. 8 (I-AUROC per local
epochs), I-AUROC per alpha, and bytes per round.

Everything is read from the run folders (``run_config.toml``, ``status.json``,
``run-*/rounds.json``); nothing is timestamped, so a report re-made from the same folder is
byte-identical. The std is over seeds (``train.seed``) with ``ddof=0``; a seed's value is
the mean over clients after the last round, as each run's ``summary.md`` shows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomllib

from fedad.config.flat import from_flat
from fedad.detectors.registry import label
from fedad.errors import FedadError
from fedad.evaluation.plots import plot_bars, plot_lines
from fedad.evaluation.run_status import read_status, run_folders

METRICS = ("i_auroc", "p_auroc", "pro")
NAMES = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "pro": "PRO"}
ALPHA, EPOCHS, SEED = "partition.alpha", "train.local_epochs", "train.seed"
# keys that differ between runs without making them different experiments
IGNORED = {SEED, "output_dir", "method", "detector", "exchange"}


@dataclass
class Run:
    """One folder of the sweep: its config (flat), and for a completed run its final
    metrics, I-AUROC per evaluated round and bytes per round."""

    name: str
    status: str
    overrides: list[str]
    config: dict = field(default_factory=dict)
    error: str | None = None
    final: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)  # {metric: [(round, mean over clients), ...]}
    bytes_per_round: float = math.nan

    @property
    def method(self) -> str:
        return label(from_flat(self.config)) if self.config else "?"


def _flat(tree: dict, prefix: str = "") -> dict:
    """TOML's dotted keys read back as nested tables, flattened again."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_run(job: Path) -> Run:
    """A run folder as the report sees it (a folder with no ``status.json`` was killed or
    is still running: it is listed as failed)."""
    status = read_status(job) or {}
    overrides = status.get("overrides")
    if overrides is None and (job / ".hydra" / "overrides.yaml").is_file():
        overrides = [line[2:].strip() for line in
                     (job / ".hydra" / "overrides.yaml").read_text().splitlines()
                     if line.startswith("- ")]
    run = Run(job.name, status.get("status", "failed"), overrides or [],
              error=status.get("error") or (None if status else "no status.json (killed, or "
                                            "still running)"))
    toml = job / "run_config.toml"
    if toml.is_file():
        run.config = _flat(tomllib.loads(toml.read_text()))
    if run.status != "completed":
        return run
    rounds_file = job / str(status.get("run_dir")) / "rounds.json"
    try:
        result = json.loads(rounds_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        run.status, run.error = "failed", f"completed but {rounds_file} is unreadable: {exc}"
        return run
    run.final = {k: result["final"][k]["mean"] for k in METRICS if k in result["final"]}
    for rec in result["rounds"]:
        for k in METRICS:
            if k in (rec.get("evaluate") or {}):
                run.curve.setdefault(k, []).append((rec["round"], rec["evaluate"][k]["mean"]))
    sent = [r["bytes"]["sent"] + r["bytes"]["received"] for r in result["rounds"]
            if r["round"] > 0 or len(result["rounds"]) == 1]
    run.bytes_per_round = float(np.mean(sent)) if sent else math.nan
    return run


def varying_keys(runs: list[Run]) -> list[str]:
    """The config keys (besides seed, method and detector) whose values differ between the
    sweep's runs: alpha and local epochs always, then any other, sorted."""
    values = defaultdict(set)
    for r in runs:
        for k, v in r.config.items():
            values[k].add(json.dumps(v))
    other = sorted(k for k, v in values.items()
                   if len(v) > 1 and k not in IGNORED and k not in (ALPHA, EPOCHS))
    return [ALPHA, EPOCHS, *other]


def _stat(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def cells(runs: list[Run]) -> tuple[list[str], list[dict]]:
    """One row per method x the varying keys: mean/std over the seeds that completed,
    the seeds, the failed runs of that cell and the mean I-AUROC curve over rounds."""
    keys = varying_keys([r for r in runs if r.config])
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.config:
            groups[(r.method, *(json.dumps(r.config.get(k)) for k in keys))].append(r)
    rows = []
    for gkey in sorted(groups):
        members = groups[gkey]
        done = sorted((r for r in members if r.status == "completed"),
                      key=lambda r: r.config.get(SEED, 0))
        row = {"method": gkey[0], **{k: json.loads(v) for k, v in zip(keys, gkey[1:],
                                                                          strict=True)},
               "seeds": [r.config.get(SEED) for r in done],
               "failed": sorted(r.name for r in members if r.status != "completed")}
        for k in METRICS:
            vals = [r.final[k] for r in done if k in r.final and not math.isnan(r.final[k])]
            row[k] = _stat(vals) if vals else None
        row["mb_per_round"] = (float(np.mean([r.bytes_per_round for r in done])) / 1e6
                               if done else None)
        curves = [dict(r.curve.get("i_auroc", [])) for r in done]
        common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        row["curve"] = {"rounds": common,
                        "mean": [float(np.mean([c[x] for c in curves])) for x in common],
                        "std": [float(np.std([c[x] for c in curves])) for x in common]}
        rows.append(row)
    return keys, rows


def _fmt(s: dict | None) -> str:
    """``mean ± std``; one seed has no spread to show, so its value stands alone."""
    if not s:
        return "n/a"
    return f"{s['mean']:.4f}" if s["n"] == 1 else f"{s['mean']:.4f} ± {s['std']:.4f}"


def _short(key: str) -> str:
    return {ALPHA: "alpha", EPOCHS: "E"}.get(key, key)


def markdown(sweep: Path, keys: list[str], rows: list[dict], runs: list[Run]) -> str:
    done = sum(r.status == "completed" for r in runs)
    head = ["method", *map(_short, keys), "seeds", *(NAMES[k] for k in METRICS), "MB / round"]
    lines = [f"# Sweep {sweep.name}: {done} of {len(runs)} runs completed", "",
             "Mean ± std (ddof 0) over seeds of the mean over clients after the last round "
             "(a cell with one seed shows its value alone).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mb = "n/a" if row["mb_per_round"] is None else f"{row['mb_per_round']:.3f}"
        seeds = ",".join(map(str, row["seeds"])) or "none"
        if row["failed"]:
            seeds += f" ({len(row['failed'])} failed)"
        lines.append("| " + " | ".join([row["method"], *(str(row[k]) for k in keys), seeds,
                                        *(_fmt(row[k]) for k in METRICS), mb]) + " |")
    failed = [r for r in runs if r.status != "completed"]
    if failed:
        common = set.intersection(*(set(r.overrides) for r in runs))
        lines += ["", "## Failed runs", "", "| folder | overrides (besides those of every run) "
                  "| error |", "|---|---|---|"]
        for r in failed:
            err = (r.error or "").replace("|", "\\|").replace("\n", " ")
            own = " ".join(o for o in r.overrides if o not in common)
            lines.append(f"| {r.name} | `{own}` | {err} |")
    return "\n".join(lines) + "\n"


def csv_text(keys: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", *keys, "seeds", "failed",
                *(f"{k}_{s}" for k in METRICS for s in ("mean", "std")), "mb_per_round"])
    for row in rows:
        stats = []
        for k in METRICS:
            stats += ["", ""] if row[k] is None else [repr(row[k]["mean"]), repr(row[k]["std"])]
        w.writerow([row["method"], *(row[k] for k in keys),
                    " ".join(map(str, row["seeds"])), len(row["failed"]), *stats,
                    "" if row["mb_per_round"] is None else repr(row["mb_per_round"])])
    return buf.getvalue()


def _lines_by(rows: list[dict], x_key: str, panel_key: str | None) -> dict:
    """``{panel: {method: {"x", "mean", "std"}}}`` of final I-AUROC, averaged over every
    other key, for :func:`~fedad.evaluation.plots.plot_lines`."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["i_auroc"] is None:
            continue
        panel = f"{_short(panel_key)} = {row[panel_key]}" if panel_key else ""
        acc[panel][row["method"]][row[x_key]].append(row["i_auroc"]["mean"])
    return {p: {m: {"x": sorted(xs), "mean": [float(np.mean(xs[x])) for x in sorted(xs)]}
                for m, xs in sorted(lines.items())} for p, lines in sorted(acc.items())}


def plots(out: Path, keys: list[str], rows: list[dict]) -> list[Path]:
    """metric-per-round (Fig. 7: one panel per alpha x E), I-AUROC per E (Fig. 8: one panel
    per alpha), I-AUROC per alpha (one panel per E), MB per round per method."""
    paths = []
    panels: dict = defaultdict(dict)
    for row in rows:
        if row["curve"]["rounds"]:
            panel = f"alpha = {row[ALPHA]}, E = {row[EPOCHS]}"
            name = row["method"] + "".join(f", {_short(k)}={row[k]}" for k in keys[2:])
            panels[panel][name] = {"x": row["curve"]["rounds"], "mean": row["curve"]["mean"],
                                   "std": row["curve"]["std"]}
    paths.append(plot_lines(dict(sorted(panels.items())), out / "rounds.png", "round",
                            "I-AUROC", "I-AUROC per round (mean ± std over seeds)"))
    paths.append(plot_lines(_lines_by(rows, EPOCHS, ALPHA), out / "epochs.png",
                            "local epochs E", "I-AUROC", "I-AUROC per local epochs"))
    paths.append(plot_lines(_lines_by(rows, ALPHA, EPOCHS), out / "alpha.png",
                            "Dirichlet alpha", "I-AUROC", "I-AUROC per alpha", logx=True))
    mb: dict = defaultdict(list)
    for row in rows:
        if row["mb_per_round"] is not None:
            mb[row["method"]].append(row["mb_per_round"])
    paths.append(plot_bars({m: float(np.mean(v)) for m, v in sorted(mb.items())},
                           out / "bytes.png", "MB per round (sent + received)",
                           "Bytes exchanged per round, per method"))
    return paths


def make_report(sweep: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Read every run folder of ``sweep`` and write ``report.{md,csv,json}`` and the
    figures to ``out`` (default ``<sweep>/report``).

    Raises:
        FedadError: ``sweep`` is not a folder or holds no run folders (one run's folder,
            with its ``status.json``, is reported as a sweep of one, failed or not).
    """
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FedadError(f"{sweep}: not a folder (give the sweep folder, e.g. multirun/<date>/"
                         "<time>)")
    jobs = run_folders(sweep)
    if not jobs and read_status(sweep) is not None:  # one fedad-sim run's folder
        jobs = [sweep]
    if not jobs:
        raise FedadError(f"{sweep}: no run folders (each run of fedad-sim -m has a .hydra/ "
                         "folder and a status.json)")
    runs = [read_run(j) for j in jobs]
    keys, rows = cells(runs)
    out = Path(out) if out else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    files["md"].write_text(markdown(sweep, keys, rows, runs))
    files["csv"].write_text(csv_text(keys, rows))
    files["json"].write_text(json.dumps(
        {"sweep": sweep.name, "keys": keys, "rows": rows,
         "runs": [{"folder": r.name, "status": r.status, "overrides": r.overrides,
                   "error": r.error, "method": r.method, "final": r.final} for r in runs]},
        indent=2, sort_keys=True) + "\n")
    for p in plots(out, keys, rows):
        files[p.stem] = p
    return files
