"""RowFed's setting (seed 000, second abstract): personalised multivariate regression with
row-clustered clients, RowFed against NonFed, FedAvg, matrix-wise and entry-wise fusion.

    python benchmarks/rowfed.py [--seeds 5] [--jobs N] [--out DIR] [--name NAME] [--quick]
        [--init nonfed|zero] [--mtd COMPARE_JSON ...] [--reuse]

The design, fixed before any result (the abstract gives none of it):

* **Synthetic** (per seed): ``M = 20`` clients, ``p = 50`` covariates, ``q = 5`` responses,
  ``n_m = 150`` training and 50 held-out rows per client. Half the rows of ``B`` (25, drawn
  per seed) are zero for every client; each other row splits the clients into 2 or 3
  groups at random (equally likely), each group's row drawn ``N(0, I_q)``. Covariates
  ``N(0, Sigma)`` with ``Sigma_jk = 0.5^|j - k|``; noise ``N(0, 0.5^2)``.
* **Real data**: scikit-learn's wine data (178 wines, 3 cultivars), the cultivars as three
  clients: the phenolic measurements (total phenols, flavanoids, OD280/OD315) are the
  ``q = 3`` responses of the other 10 standardised measurements (plus an intercept
  column); 25% of each client's rows held out (seeded). No cluster truth: only the
  prediction error is reported.
* **Tuning**: every method's penalties on a validation split (20% of each client's
  training rows), minimising the validation MSE over ``fusion_lam`` in
  {0.03, 0.1, 0.3, 0.6, 1.2} x ``sparsity_lam`` in {0.003, 0.01, 0.05, 0.1} (NonFed and
  FedAvg: ``sparsity_lam`` only), at full participation; then refitted on all training
  rows. The held-out rows are scored once, after. The grids were widened below (from
  {0.1, ..., 1.2} x {0.01, 0.05, 0.1}) after the first table's tuning took their smallest
  values; the table of chosen penalties says how often each grid's edge was taken. The
  fusion weight is scaled by the group's size (``sqrt(g / q)``,
  :func:`fedad.rowfed.admm.group_weight`): before, a whole matrix's difference lay beyond
  SCAD's ``a * lambda`` at every weight and the matrix-wise baseline stopped after one
  round with NonFed's fit.
* **Fixed**: SCAD for both penalties (``a = 3.7``), ``rho = 1``, 10 local steps, at most
  2,000 rounds, stopping once a round moves ``B`` by less than ``1e-6`` (RowFed, fusion
  baselines) and the primal residual is below it; FedAvg runs 200 rounds.
* **Start** (``--init``): the fusion methods' ADMM starts from every client's own fit
  (``nonfed``, the default). This was changed after the first table: the a priori start
  was ``zero`` (``B = 0``), whose results are kept in ``results/rowfed_zero_start.*``
  (``--init zero --name rowfed_zero_start``); there every seed's tuning took the grid's
  smallest fusion weight and the fit still over-fused (``fedad/rowfed/admm.py``).
* **Metrics**: estimation error ``sqrt(sum_m ||B_m - B*_m||_F^2 / M)``, held-out MSE (mean
  over clients), per-row cluster recovery (adjusted Rand index of the ``theta``-clusters,
  tolerance 0.1, against the true groups; averaged over the rows), rounds to converge and
  the MB exchanged (each joining client receives its target and uploads ``B_m``, float64).
* **Participation**: ``pi`` in {0.3, 0.6, 1.0} for RowFed at the chosen penalties; the
  convergence plot is the iterate gap ``||B^t - B^*||_F`` to the ``pi = 1`` solution per
  round, one curve per ``pi`` (the abstract's claim: the gap contracts faster as ``pi``
  grows).

Writes ``<out>/<name>.{json,md,png}``. ``--quick`` (tests, smoke runs): 6 clients, 10
covariates, one seed, 300 rounds at most. ``--mtd``: the anomaly-detection rows (RowFed's
exchange of FedDyMem's projection against local, FedAvg and FedBN on MTD) read from
``benchmarks/compare.py`` results; ``--reuse`` adds them to an earlier run's file.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import RESULTS, command_line, machine, write_results  # noqa: E402
from fedad.rowfed.admm import initial_state, row_clusters, run_round, solve  # noqa: E402
from fedad.rowfed.baselines import fedavg, nonfed  # noqa: E402
from fedad.rowfed.config import INITS, RowFedConfig, fpfc  # noqa: E402
from fedad.rowfed.problem import Client  # noqa: E402

# widened below after the first table's tuning took their smallest values (0.1 on four
# seeds of five, 0.01 on every seed); a method's fusion weight is scaled by its group's
# size in the solver (fedad.rowfed.admm.group_weight), so one grid serves every fusion
FUSION_GRID = (0.03, 0.1, 0.3, 0.6, 1.2)
SPARSITY_GRID = (0.003, 0.01, 0.05, 0.1)
PIS = (0.3, 0.6, 1.0)
METHODS = ("rowfed", "matrix", "entry", "nonfed", "fedavg")


def synthetic(seed: int, m: int = 20, p: int = 50, q: int = 5, n: int = 150,
              held: int = 50) -> tuple[list[Client], list[Client], np.ndarray, np.ndarray]:
    """Training and held-out clients, the true ``B`` ``(M, p, q)`` and the true groups
    ``(p, M)`` (module docstring)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((m, p, q))
    labels = np.zeros((p, m), dtype=int)
    for j in rng.permutation(p)[: p // 2]:  # the nonzero rows
        k = int(rng.integers(2, 4))
        labels[j] = rng.integers(0, k, m)
        rows = rng.normal(size=(k, q))
        truth[:, j] = rows[labels[j]]
    cov = 0.5 ** np.abs(np.subtract.outer(np.arange(p), np.arange(p)))
    chol = np.linalg.cholesky(cov)
    train, test = [], []
    for c in range(m):
        x = rng.normal(size=(n + held, p)) @ chol.T
        y = x @ truth[c] + 0.5 * rng.normal(size=(n + held, q))
        train.append(Client(x[:n], y[:n]))
        test.append(Client(x[n:], y[n:]))
    return train, test, truth, labels


def wine(seed: int) -> tuple[list[Client], list[Client]]:
    """scikit-learn's wine data, one client per cultivar (module docstring)."""
    from sklearn.datasets import load_wine

    data = load_wine()
    names = list(data.feature_names)
    resp = [names.index(k) for k in ("total_phenols", "flavanoids",
                                     "od280/od315_of_diluted_wines")]
    cov = [i for i in range(len(names)) if i not in resp]
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(data.target):
        rows = rng.permutation(np.flatnonzero(data.target == k))
        cut = int(round(0.75 * len(rows)))
        xs = np.hstack([x[:, cov], np.ones((len(x), 1))])
        train.append(Client(xs[rows[:cut]], x[rows[:cut]][:, resp]))
        test.append(Client(xs[rows[cut:]], x[rows[cut:]][:, resp]))
    return train, test


def split(clients: list[Client], seed: int, frac: float = 0.2) -> tuple[list[Client],
                                                                       list[Client]]:
    """Each client's rows split into fitting and validation rows (seeded)."""
    rng = np.random.default_rng([seed, 7])
    fit, val = [], []
    for c in clients:
        idx = rng.permutation(c.n)
        k = max(1, int(round(frac * c.n)))
        val.append(Client(c.x[idx[:k]], c.y[idx[:k]]))
        fit.append(Client(c.x[idx[k:]], c.y[idx[k:]]))
    return fit, val


def mse(b: np.ndarray, clients: list[Client]) -> float:
    return float(np.mean([np.mean((c.y - c.x @ b[m]) ** 2) for m, c in enumerate(clients)]))


def _nonfed(clients: list[Client], cfg: RowFedConfig, tol: float):
    return nonfed(clients, cfg), None, []


def _fedavg(clients: list[Client], cfg: RowFedConfig, tol: float):
    b, hist = fedavg(clients, replace(cfg, rounds=min(cfg.rounds, 200)))
    return np.repeat(b[None], len(clients), 0), None, hist


FUSION = {"rowfed": "row", "matrix": "matrix", "entry": "entry"}  # method -> its groups
BASELINES = {"nonfed": _nonfed, "fedavg": _fedavg}


def fit(method: str, clients: list[Client], cfg: RowFedConfig, tol: float):
    """The method's coefficients ``(M, p, q)``, its state (fusion methods) and history."""
    if method in BASELINES:
        return BASELINES[method](clients, cfg, tol)
    state = solve(clients, replace(cfg, fusion=FUSION[method]), tol=tol)
    return state.b, state, state.history


def tune(method: str, clients: list[Client], cfg: RowFedConfig, seed: int,
         tol: float) -> RowFedConfig:
    """The penalties of least validation MSE (module docstring)."""
    fit_rows, val_rows = split(clients, seed)
    fusion = FUSION_GRID if method in FUSION else (cfg.fusion_lam,)
    best = None
    for lam1, lam2 in itertools.product(fusion, SPARSITY_GRID):
        c = replace(cfg, fusion_lam=lam1, sparsity_lam=lam2)
        b, _, _ = fit(method, fit_rows, c, tol)
        score = mse(b, val_rows)
        if best is None or score < best[0]:
            best = (score, c)
    return best[1]


def ari(state, labels: np.ndarray, tol: float) -> float | None:
    if state is None:
        return None
    from sklearn.metrics import adjusted_rand_score

    found = row_clusters(state, tol)
    return float(np.mean([adjusted_rand_score(t, f) for t, f in zip(labels, found,
                                                                     strict=True)]))


def mb(history: list[dict], clients: list[Client]) -> float:
    """MB exchanged: each joining client downloads and uploads one ``p x q`` float64
    matrix per round (NonFed exchanges nothing)."""
    p, q = clients[0].x.shape[1], clients[0].y.shape[1]
    return 2 * sum(h["participants"] for h in history) * p * q * 8 / 1e6


def estimation(b: np.ndarray, truth: np.ndarray) -> float:
    """``sqrt(sum_m ||B_m - B*_m||_F^2 / M)``."""
    return float(np.sqrt(((b - truth) ** 2).sum() / len(truth)))


def seed_rows(seed: int, quick: bool, init: str = "nonfed") -> dict:
    """One seed's work: every method on the synthetic problem (penalties tuned on
    validation), RowFed at each ``pi`` (the penalties chosen at ``pi = 1``), the
    convergence curves (seed 0 only) and the wine rows."""
    size = dict(m=6, p=10) if quick else {}
    base = fpfc(rounds=300 if quick else 2000, init=init)  # FPFC's synthetic scale
    tol = 1e-6
    train, test, truth, labels = synthetic(seed, **size)
    out: dict = {"synthetic": {}, "participation": {}, "curves": {}, "wine": {}}
    chosen = {}
    for method in METHODS:
        t = time.perf_counter()
        cfg = tune(method, train, base, seed, tol)
        chosen[method] = cfg
        b, state, history = fit(method, train, cfg, tol)
        out["synthetic"][method] = {
            "estimation": estimation(b, truth),
            "prediction": mse(b, test), "ari": ari(state, labels, cfg.cluster_tol),
            "rounds": len(history), "mb": mb(history, train),
            "fusion_lam": cfg.fusion_lam, "sparsity_lam": cfg.sparsity_lam,
            "seconds": time.perf_counter() - t}
    cfg = chosen["rowfed"]
    for pi in PIS:
        c = replace(cfg, participation=pi)
        state = solve(train, c, tol=tol)
        out["participation"][str(pi)] = {
            "estimation": estimation(state.b, truth),
            "prediction": mse(state.b, test), "ari": ari(state, labels, c.cluster_tol),
            "rounds": state.round, "mb": mb(state.history, train)}
    if seed == 0:  # the convergence plot: RowFed's gap to the pi = 1 solution
        star = solve(train, cfg, tol=1e-9).b
        for pi in PIS:
            gaps = []
            c = replace(cfg, participation=pi)
            state = initial_state(train, c)
            for _ in range(300 if quick else 1000):
                run_round(train, state, c)
                gaps.append(float(np.linalg.norm(state.b - star)))
            out["curves"][str(pi)] = gaps
    wtrain, wtest = wine(seed)
    for method in METHODS:
        c = tune(method, wtrain, replace(base, rounds=2000), seed, tol)
        b, _, _ = fit(method, wtrain, c, tol)
        out["wine"][method] = mse(b, wtest)
    print(f"rowfed benchmark: seed {seed} done", flush=True)
    return out


def all_seeds(seeds: int, quick: bool, jobs: int, init: str = "nonfed") -> dict:
    """Every seed's rows, ``jobs`` seeds at a time, gathered per method in seed order."""
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            per = list(pool.map(seed_rows, range(seeds), [quick] * seeds, [init] * seeds))
    else:
        per = [seed_rows(s, quick, init) for s in range(seeds)]
    return {"synthetic": {m: [p["synthetic"][m] for p in per] for m in METHODS},
            "participation": {str(pi): [p["participation"][str(pi)] for p in per]
                              for pi in PIS},
            "curves": per[0]["curves"],
            "wine": {m: [p["wine"][m] for p in per] for m in METHODS}}


MTD_METHODS = ("local", "fedavg", "fedbn", "rowfed")  # the comparison on MTD


def mtd_rows(paths: list[Path]) -> dict:
    """The MTD rows (FedDyMem's head on MTD, 5 sites, alpha 0.1: RowFed's exchange of the
    projection against local, FedAvg and FedBN) read from compare.py results, the later
    file winning; each row names its file and command."""
    import json

    out = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for method in MTD_METHODS:
            if method in data.get("rows", {}):
                r = data["rows"][method]
                out[method] = {k: r[k]["mean"] for k in ("i_auroc", "p_auroc", "pro")}
                out[method].update(bytes_per_round=r.get("bytes_per_round"),
                                   source=Path(path).name, command=data.get("command"))
    missing = [m for m in MTD_METHODS if m not in out]
    if missing:
        raise SystemExit(f"--mtd: no row for {missing} in {[str(p) for p in paths]}")
    return out


def stats(values: list) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{np.mean(v):.3f} +- {np.std(v):.3f}"


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for pi, gaps in curves.items():
        ax.semilogy(np.arange(1, len(gaps) + 1), np.maximum(gaps, 1e-12), label=f"pi = {pi}")
    ax.set_xlabel("round")
    ax.set_ylabel("||B^t - B*||_F")
    ax.set_title("RowFed: iterate gap to the full-participation solution", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


START = {"nonfed": "every client's own fit (NonFed)", "zero": "zero (B = 0)"}


def markdown(payload: dict) -> str:
    lines = ["# RowFed: sparse row-wise fusion (synthetic and real multivariate regression)",
             "", f"The fusion methods' ADMM starts from {START[payload.get('init', 'zero')]}.",
             "", f"Synthetic, {payload['seeds']} seed(s), mean +- std:", "",
             "| method | estimation error | held-out MSE | row ARI | rounds | MB |",
             "|---|---|---|---|---|---|"]
    for method, rs in payload["synthetic"].items():
        lines.append(f"| {method} | {stats([r['estimation'] for r in rs])} | "
                     f"{stats([r['prediction'] for r in rs])} | "
                     f"{stats([r['ari'] for r in rs])} | "
                     f"{stats([r['rounds'] for r in rs])} | {stats([r['mb'] for r in rs])} |")
    lines += ["", "RowFed by participation probability pi:", "",
              "| pi | estimation error | held-out MSE | row ARI | rounds | MB |",
              "|---|---|---|---|---|---|"]
    for pi, rs in payload["participation"].items():
        lines.append(f"| {pi} | {stats([r['estimation'] for r in rs])} | "
                     f"{stats([r['prediction'] for r in rs])} | "
                     f"{stats([r['ari'] for r in rs])} | "
                     f"{stats([r['rounds'] for r in rs])} | {stats([r['mb'] for r in rs])} |")
    lines += ["", "Penalties chosen on validation (seeds at the grid's smallest / largest "
              "value):", "", "| method | fusion_lam chosen | at edge | sparsity_lam chosen | "
              "at edge |", "|---|---|---|---|---|"]
    for method, rs in payload["synthetic"].items():
        fused = method in FUSION  # NonFed and FedAvg tune the sparsity alone
        cells = [] if fused else ["-", "-"]
        grids = [("fusion_lam", FUSION_GRID)] if fused else []
        for key, grid in [*grids, ("sparsity_lam", SPARSITY_GRID)]:
            got = [r[key] for r in rs]
            cells += [", ".join(f"{v:g}" for v in got),
                      f"{sum(v == grid[0] for v in got)} / {sum(v == grid[-1] for v in got)}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if payload.get("wine"):
        lines += ["", "Wine (scikit-learn; 3 cultivars as clients), held-out MSE:", "",
                  "| method | MSE |", "|---|---|"]
        lines += [f"| {m} | {stats(v)} |" for m, v in payload["wine"].items()]
    if payload.get("mtd"):
        lines += ["", "MTD (FedDyMem's head, 5 sites, alpha 0.1, 224 px, seed 0; RowFed "
                  "personalises the projection's rows):", "",
                  "| method | I-AUROC | P-AUROC | PRO | MB up/round | from |",
                  "|---|---|---|---|---|---|"]
        for m, r in payload["mtd"].items():
            mbs = "-" if r["bytes_per_round"] is None else f"{r['bytes_per_round'] / 1e6:.2f}"
            lines.append(f"| {m} | {r['i_auroc']:.3f} | {r['p_auroc']:.3f} | {r['pro']:.3f} | "
                         f"{mbs} | {r['source']} |")
    lines += ["", "Claims:", *[f"- {c}" for c in payload["claims"]]]
    lines += ["", "Commands:", *[f"- `{c}`" for c in payload["commands"]]]
    return "\n".join(lines)


def claims(payload: dict) -> list[str]:
    """Each of the abstract's claims, held or not, from the synthetic table."""
    syn = payload["synthetic"]

    def mean(method, key):
        return float(np.mean([r[key] for r in syn[method] if r[key] is not None]))

    out = []
    for key, what in (("estimation", "estimation error"), ("prediction", "prediction error")):
        others = {m: mean(m, key) for m in ("nonfed", "fedavg", "matrix")}
        ours = mean("rowfed", key)
        held = all(ours < v for v in others.values())
        out.append(f"lower {what} than NonFed, FedAvg and matrix-wise fusion: "
                   f"{'held' if held else 'not held'} (RowFed {ours:.3f}; "
                   + ", ".join(f"{m} {v:.3f}" for m, v in others.items()) + ")")
    a = {m: mean(m, "ari") for m in ("rowfed", "matrix", "entry")}
    ours, rivals = a["rowfed"], max(a["matrix"], a["entry"])
    held = ours > rivals
    out.append("better variable-level cluster recovery than matrix-wise (and entry-wise) "
               f"fusion: {'held' if held else 'not held'} (row ARI "
               + ", ".join(f"{m} {v:.3f}" for m, v in a.items()) + ")")
    curves = payload["curves"]
    at = min(len(g) for g in curves.values()) // 4
    gaps = {pi: curves[pi][at - 1] for pi in sorted(curves, key=float)}
    held = all(gaps[a_] > gaps[b_] for a_, b_ in zip(list(gaps), list(gaps)[1:], strict=False))
    out.append(f"the iterate gap contracts faster as pi grows: {'held' if held else 'not held'}"
               f" (gap at round {at}: " + ", ".join(f"pi {k} {v:.3g}" for k, v in gaps.items())
               + ")")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="rowfed")
    p.add_argument("--quick", action="store_true", help="a small problem, one seed")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (processes)")
    p.add_argument("--init", choices=INITS, default="nonfed",
                   help="the fusion methods' start (module docstring)")
    p.add_argument("--mtd", type=Path, action="append", default=[],
                   help="a benchmarks/compare.py results JSON whose rowfed, local, fedavg "
                        "and fedbn rows make the MTD table (repeatable)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the regression rows of <out>/<name>.json (add --mtd rows)")
    args = p.parse_args()
    seeds = 1 if args.quick else args.seeds
    t = time.perf_counter()
    earlier = args.out / f"{args.name}.json"
    if args.reuse:  # the regression rows of an earlier run, the MTD rows (re)read
        import json

        if not earlier.is_file():
            p.error(f"--reuse: {earlier} does not exist")
        payload = json.loads(earlier.read_text())
        payload["commands"] = [*payload["commands"], command_line()]
    else:
        payload = {"machine": machine(), "commands": [command_line()], "seeds": seeds,
                   "init": args.init, **all_seeds(seeds, args.quick, args.jobs, args.init)}
    if args.mtd:
        payload["mtd"] = mtd_rows(args.mtd)
    payload["claims"] = claims(payload)
    if not args.reuse:
        payload["seconds"] = time.perf_counter() - t
    plot(payload["curves"], args.out / f"{args.name}.png")
    write_results(args.out, args.name, payload, markdown(payload))


if __name__ == "__main__":
    main()
