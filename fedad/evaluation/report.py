"""What a federated run leaves behind: resolved config, per-round metrics (JSON), a summary
table and plots, written after every round so an interrupted run keeps its history."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from fedad.config.schema import RunConfig
from fedad.detectors.registry import label, schedule
from fedad.evaluation.plots import plot_metric_rounds

METRICS = ("i_auroc", "p_auroc", "pro")


def metric_series(history: list[dict]) -> dict[str, dict[str, list[float]]]:
    """``{metric: {"rounds", "mean", "std"}}`` over the evaluated rounds."""
    out: dict[str, dict[str, list[float]]] = {}
    for rec in history:
        ev = rec.get("evaluate") or {}
        for k in METRICS:
            if k in ev:
                s = out.setdefault(k, {"rounds": [], "mean": [], "std": []})
                s["rounds"].append(rec["round"])
                s["mean"].append(ev[k]["mean"])
                s["std"].append(ev[k]["std"])
    return out


def final_metrics(history: list[dict]) -> dict:
    """The last evaluated round's metrics (mean, std, per client)."""
    for rec in reversed(history):
        if rec.get("evaluate"):
            return rec["evaluate"]
    return {}


def summary_markdown(cfg: RunConfig, history: list[dict],
                     rejected_per_client: dict[str, int] | None = None) -> str:
    def fmt(d):
        return ("n/a" if not d or math.isnan(d["mean"])
               else f"{d['mean']:.4f} ± {d['std']:.4f}")
    lines = [f"# {label(cfg)} run: {cfg.dataset.name}, {cfg.num_clients} clients, "
             f"{cfg.partition.method} (alpha {cfg.partition.alpha}), {schedule(cfg)}", "",
             "| round | clients | I-AUROC | P-AUROC | PRO | MB up/client | s |",
             "|---|---|---|---|---|---|---|"]
    for rec in history:
        ev = rec.get("evaluate") or {}
        lines.append(f"| {rec['round']} | {rec['train']['clients']} | {fmt(ev.get('i_auroc'))} "
                     f"| {fmt(ev.get('p_auroc'))} | {fmt(ev.get('pro'))} | "
                     f"{rec['bytes']['received_per_client'] / 1e6:.3f} | "
                     f"{rec['seconds']['round']:.1f} |")
    final = final_metrics(history)
    if final.get("per_client"):
        keys = [k for k in METRICS if k in final]
        lines += ["", "Final round, per client:", "",
                  "| client | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for pid, vals in final["per_client"].items():
            lines.append(f"| {pid} | " + " | ".join(f"{vals[k]:.4f}" for k in keys) + " |")
    if rejected_per_client:
        lines += ["", "Replies left out of aggregation (reasons in rounds.json `rejected`):", "",
                  "| client | replies left out |", "|---|---|"]
        lines += [f"| {c} | {n} |" for c, n in sorted(rejected_per_client.items())]
    return "\n".join(lines) + "\n"


def write_run(out: str | Path, cfg: RunConfig, history: list[dict],
              extra: dict | None = None) -> Path:
    """Write ``config.json``, ``rounds.json``, ``summary.md`` and ``metrics.png`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    payload = {"final": final_metrics(history), "rounds": history, **(extra or {})}
    (out / "rounds.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(cfg, history,
                                                     (extra or {}).get("rejected_per_client")))
    series = metric_series(history)
    if series:
        plot_metric_rounds(series, out / "metrics.png",
                           title=f"{label(cfg)}, mean ± std over clients")
    return out
