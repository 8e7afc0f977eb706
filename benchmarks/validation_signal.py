"""Does the validation score rank variants and rounds the way the test score does?

    python benchmarks/validation_signal.py [--root ../shared/data/mtd] [--rounds 4]
        [--ablation benchmarks/results/feddymem_ablation.json] [--work DIR] [--out DIR]
        [--name validation_signal] [-- key=value ...]

The validation split (each client's held-out normal training images, each once as it is and
once with a synthetic defect, ``fedad/data/synthetic.py``) is what every choice in fedad is
made on. This benchmark asks whether it can make them. Over the candidates of the FedDyMem
ablation (``feddymem_ablation.py``: ``CANDIDATES`` and ``FAITHFUL_ROWS``), each run
federated (5 clients, Dirichlet alpha 0.1) with validation *and* test scored after every
round, every (candidate, round) point has a validation score ((image + pixel AUROC) / 2,
weighted over sites) and a test score. Reported:

* Spearman's rho and Kendall's tau between validation and test over all points (test image
  AUROC, and test (I-AUROC + P-AUROC) / 2 where the data has masks);
* the mean over candidates of the within-run rho (ranking rounds);
* the test score of the point validation picks against the best test point (regret);
* the runtime check of ``fedad/evaluation/chance.py`` (is the validation mean more than 2
  chance standard deviations above 0.5?) per point.

Without ``--root`` it runs on the embedded textures (their default 160 px). With
``--ablation`` it also reads a finished ``feddymem_ablation.json`` (MTD), whose runs scored
the test set only at the kept and the last round: two points per run. Finished runs in
``--work`` are reused. Writes ``<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from _inprocess import run_scoring_every_round  # noqa: E402
from feddymem_ablation import CANDIDATES, FAITHFUL_ROWS  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.evaluation.chance import Z  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
VARIANTS = {**CANDIDATES, **{f"faithful: {k}": v for k, v in FAITHFUL_ROWS.items()}}


def correlations(points: list[dict], test_key: str) -> dict:
    """Rank agreement of ``val_score`` and ``test[test_key]`` over ``points`` (each with
    ``variant``); ``nan`` where a side is constant."""
    pts = [p for p in points if test_key in p["test"]]
    v = np.array([p["val_score"] for p in pts])
    t = np.array([p["test"][test_key] for p in pts])
    out = {"points": len(pts), "spearman": float("nan"), "kendall": float("nan")}
    if len(pts) >= 3 and v.std() > 0 and t.std() > 0:
        out["spearman"] = float(spearmanr(v, t).statistic)
        out["kendall"] = float(kendalltau(v, t).statistic)
    within = []
    for name in dict.fromkeys(p["variant"] for p in pts):
        run = [p for p in pts if p["variant"] == name]
        rv = np.array([p["val_score"] for p in run])
        rt = np.array([p["test"][test_key] for p in run])
        if len(run) >= 3 and rv.std() > 0 and rt.std() > 0:
            within.append(float(spearmanr(rv, rt).statistic))
    out["within_run_spearman_mean"] = float(np.mean(within)) if within else float("nan")
    out["within_runs"] = len(within)
    if pts:
        pick = pts[int(np.argmax(v))]  # the earliest point of best validation score
        out["picked"] = {"variant": pick["variant"], "round": pick["round"],
                         "test": float(pick["test"][test_key])}
        out["best_test"] = float(t.max())
        out["regret"] = float(t.max() - pick["test"][test_key])
    return out


def every_round_points(work: Path, base: list[str], rounds: int) -> list[dict]:
    points = []
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        path = work / f"variant-{i}.json"
        ov = [*base, *overrides, f"train.rounds={rounds}"]
        done = json.loads(path.read_text()) if path.is_file() else None
        if not done or done.get("overrides") != ov:
            log.info("== %s: %s", name, " ".join(overrides))
            done = {"overrides": ov, "rounds": run_scoring_every_round(compose(ov))}
            work.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(done, indent=1))
        points += [{"variant": name, **r} for r in done["rounds"]]
    return points


def ablation_points(path: Path) -> list[dict]:
    """The (kept round, last round) points of every run of a ``feddymem_ablation.json``."""
    data = json.loads(path.read_text())
    runs = {f"select: {k}": v for k, v in data["select"].items()}
    for title, rows in data["tables"].items():
        runs |= {f"{title}: {k}": v for k, v in rows.items()}
    points = []
    for name, r in runs.items():
        by_round = {h["round"]: h for h in r["history"]}
        for rnd, test in ((r["chosen_round"], r.get("test")),
                          (r["last_round"], r.get("test_last_round"))):
            if test is None or any(p["variant"] == name and p["round"] == rnd for p in points):
                continue
            points.append({"variant": name, "round": rnd, **by_round[rnd],
                           "validation": None, "test": test})
    return points


def with_combined(points: list[dict]) -> list[dict]:
    for p in points:
        if "p_auroc" in p["test"]:
            p["test"]["i_p_mean"] = (p["test"]["i_auroc"] + p["test"]["p_auroc"]) / 2
    return points


def summary(points: list[dict]) -> dict:
    informative = [p["validation"]["informative"] for p in points if p.get("validation")]
    return {"i_auroc": correlations(points, "i_auroc"),
            "i_p_mean": correlations(points, "i_p_mean"),
            "val_i_auroc_range": [min(p["val_i_auroc"] for p in points),
                                  max(p["val_i_auroc"] for p in points)],
            "informative_points": int(sum(informative)) if informative else None,
            "checked_points": len(informative)}


def _f(x: float) -> str:
    return "-" if x != x else f"{x:+.2f}"


def markdown(results: dict) -> str:
    lines = ["Does the validation score rank variants and rounds as the test score does? "
             "Points: (variant, round) of the FedDyMem ablation's candidates, federated "
             "(5 clients, Dirichlet alpha 0.1). Validation score = (image + pixel AUROC) / 2 "
             "on held-out normals plus one synthetic defect each (strength "
             "calibration.synthetic_strength 0.2), weighted over sites. Test score: mean over "
             "sites. rho = Spearman, tau = Kendall over all points; 'within' = mean Spearman "
             "over rounds inside one run; regret = best test score minus the test score of "
             f"the point validation picks. Informative = validation I-AUROC more than {Z:g} "
             "chance sd above 0.5 (fedad/evaluation/chance.py).", "",
             "| data | points | test score | rho | tau | within (runs) | picked: test / best "
             "| val I-AUROC range | informative points |", "|---" * 9 + "|"]
    for data, s in results.items():
        for key, name in (("i_auroc", "I-AUROC"), ("i_p_mean", "(I + P) / 2")):
            c = s[key]
            if not c["points"]:
                continue
            inf = ("-" if s["informative_points"] is None
                   else f"{s['informative_points']} / {s['checked_points']}")
            lo, hi = s["val_i_auroc_range"]
            lines.append(f"| {data} | {c['points']} | {name} | {_f(c['spearman'])} | "
                         f"{_f(c['kendall'])} | {_f(c['within_run_spearman_mean'])} "
                         f"({c['within_runs']}) | {c['picked']['test']:.4f} / "
                         f"{c['best_test']:.4f} | {lo:.2f}-{hi:.2f} | {inf} |")
    lines += ["", f"Command: `{command_line()}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="MTD root (default: embedded textures)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ablation", type=Path, default=None,
                        help="a finished feddymem_ablation.json to read as well")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-valsignal"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="validation_signal")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every run")
    args = parser.parse_args()
    setup_logging()
    base = ["num_clients=5", "partition.alpha=0.1", "partition.seed=0", *args.overrides]
    if args.root:
        data = "MTD (every round)"
        base = ["dataset.name=mtd", f"dataset.root={Path(args.root).resolve()}",
                "backbone.cache=disk", "backbone.cache_dir=/tmp/fedad-featcache", *base]
    else:
        data = "textures (every round)"
    results = {data: summary(with_combined(every_round_points(args.work / data.split()[0],
                                                           base, args.rounds)))}
    if args.ablation:
        results["MTD (ablation: kept and last round)"] = summary(
            with_combined(ablation_points(args.ablation)))
    payload = {"command": command_line(), "machine": machine(), "results": results}
    write_results(args.out, args.name, payload, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
