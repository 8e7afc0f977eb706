"""FedDyMem's trained head, diagnosed: the experiments that separate why training the head
makes the detector worse (issue 53), each a switch fixed before any number was read.

    python benchmarks/feddymem_head.py --root ../shared/data/mtd [--rounds 3]
        [--confirm-rounds 6] [--only NAME ...] [--seeds 0] [--exchanges NAME ...]
        [--exchange-seeds 0 1 2] [--work DIR] [--out DIR] [key=value ...]

Every experiment is a federated run (5 sites, Dirichlet alpha 0.1 over MTD's product
types, partition seed 0; 224 px, Lite0; in one process, ``_inprocess.run_in_process``: the
same sites, messages and aggregation as a Flower run). After every round it records the
validation split's scores (held-out normals and one synthetic defect each: what choices
are made on), the mean training loss and, read from each site's head and the bank it
scores against (:func:`measures`), the measures below. The round of best validation score
is then scored once on the whole test set (I-AUROC, P-AUROC, PRO; means over sites).

* ``rank``: the effective rank (exp of the entropy of the normalised singular values) of
  the memory features M on a fixed sample of the site's training patches; the frozen
  features' own is ``rank_input``. A collapsing head loses rank.
* ``spread``: the mean over channels of M's standard deviation across those patches,
  relative to the frozen features' (``spread_input`` in absolute terms).
* ``grid_share``: ||W_O O|| / (||W_O O|| + ||W_P P_hat||), what the sampled grid
  contributes to M against the CoordConv path (Eq. 10-11; absent without a generator).
* ``train_distance`` / ``bank_spacing``: the mean distance of those training patches to
  their nearest bank feature, and the bank's median nearest-neighbour spacing; their ratio
  says how tightly the head has pulled the normal patches in.
* ``test_ratio`` and ``test_sample_i_auroc``: the mean image score of the anomalous test
  images over that of the normal ones (1.0: no separation) and the image AUROC, on a
  fixed sample of ``TEST_SAMPLE`` anomalous and as many normal test images (the whole test
  set every round would take three minutes a round; only the kept round is scored whole).

The experiments (``EXPERIMENTS``): the paper's pipeline (positional bank, K-means, Adam at
1e-3, PyTorch's initialisation) with the head off and on; the bank fixed at round 0 (CFA's
reading) with the paper's pipeline and with the set base of feddymem_ablation.py; one
site against five; SGD at 0.01 and 0.1 and Adam at 1e-5; an anchor to the head as drawn;
identity initialisation; CFA's squared distance with its repulsive term.

Two stages follow once validation has chosen a variant (:func:`choose_variant`): the
confirmation (the variant and its pipeline with the head off, ``--confirm-rounds`` rounds,
three seeds), and the paper's Table I on that variant (``--exchanges``, the same rounds,
``--exchange-seeds``): FedDyMem's exchange of banks against the weight exchanges of the
same head (:data:`EXCHANGES`, :func:`exchange_overrides`), seed-major so an interrupted
table has every exchange's first seed. ``--only`` with no names skips the experiments and
reads them from the earlier results.

Finished runs in ``--work`` are reused, so an interrupted benchmark resumes. Writes
``<name>.json`` and ``<name>.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from _inprocess import run_in_process  # noqa: E402
from feddymem_ablation import SET_BASE  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.components.knn import NearestNeighbours  # noqa: E402
from fedad.components.rows import as_rows  # noqa: E402
from fedad.detectors.feddymem.generator import MemoryGenerator  # noqa: E402
from fedad.detectors.feddymem.loss import bank_spacing  # noqa: E402
from fedad.evaluation.scores import score  # noqa: E402
from fedad.federation.in_process import InProcess  # noqa: E402
from fedad.federation.records import Envelope  # noqa: E402
from fedad.federation.server import Server  # noqa: E402
from fedad.federation.site import SiteRound, open_round  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")

HEAD_OFF = ["head.projection=false", "head.generator=false"]
# Fixed a priori (before any run): the learning rates are decades around the usual SGD
# rates of FL code (SCAFFOLD's 0.01 in fedad/exchanges/config.py) and two decades under
# the paper's Adam rate; the anchor weight 1.0 makes moving a patch by one unit of feature
# distance cost as much as one unit of Eq. 12's mean distance.
EXPERIMENTS: dict[str, list[str]] = {
    "paper, head off": HEAD_OFF,
    "paper": [],
    "paper, bank fixed at round 0": ["feddymem.target=initial"],
    "paper, one site": ["num_clients=1"],
    "paper, SGD lr 0.01": ["train.optimizer=sgd", "train.lr=0.01"],
    "paper, SGD lr 0.1": ["train.optimizer=sgd", "train.lr=0.1"],
    "paper, Adam lr 1e-5": ["train.lr=1e-05"],
    "paper, anchor 1.0": ["feddymem.anchor=1.0"],
    "paper, identity init": ["head.init=identity"],
    "paper, CFA squared + repulsion": ["feddymem.distance=squared", "feddymem.repulsion=1.0"],
    "set, head off": [*SET_BASE, *HEAD_OFF],
    "set + head": SET_BASE,
    "set + head, bank fixed at round 0": [*SET_BASE, "feddymem.target=initial"],
}
# the head-off run each experiment is compared with (the same pipeline, nothing trained)
def head_off_of(name: str) -> str:
    return "set, head off" if name.startswith("set") else "paper, head off"


# Issue 53 item 3 (the paper's Table I): the chosen variant's head, trained and exchanged
# by each weight exchange, beside FedDyMem's own exchange of banks ("summary": the
# confirmation's runs, reused). The head is the variant's, without BatchNorm, except for
# FedBN, which is defined by the BatchNorm it keeps local (head.batch_norm=true); "summary,
# BatchNorm" is FedDyMem with that head (what the weight exchanges' head would be if every
# row had FedBN's). "local" trains each site alone.
@dataclass(frozen=True)
class Row:
    """One row of the exchange table: its overrides beside the variant's; ``own``: an
    exchange of FedDyMem's banks (the target compares the weight exchanges with it);
    ``confirmation``: the confirmation's runs are this row (reused, not run again);
    ``sgd_rate``: a key that takes the variant's SGD learning rate (SCAFFOLD trains by
    plain SGD at its own rate, so it gets the variant's and differs only in the control
    variates)."""

    overrides: tuple[str, ...]
    own: bool = False
    confirmation: bool = False
    sgd_rate: str | None = None


EXCHANGES: dict[str, Row] = {
    "summary": Row((), own=True, confirmation=True),
    "fedavg": Row(("exchange=fedavg",)),
    "fedprox": Row(("exchange=fedprox",)),
    "scaffold": Row(("exchange=scaffold",), sgd_rate="scaffold.lr"),
    "fedbn": Row(("head.batch_norm=true", "exchange=fedbn")),
    "fedphp": Row(("exchange=fedphp",)),
    "apple": Row(("exchange=apple",)),
    "dbe": Row(("exchange=dbe",)),
    "local": Row(("exchange=local",)),
    "summary, BatchNorm": Row(("head.batch_norm=true", "exchange=summary"), own=True),
}
DEFAULT_EXCHANGES = list(EXCHANGES)[:-1]  # the BatchNorm row on request (--exchanges)
MAIN = next(n for n, r in EXCHANGES.items() if r.confirmation)  # FedDyMem's own row


def exchange_overrides(variant: list[str], exchange: str) -> list[str]:
    """The overrides of the chosen variant exchanged by ``exchange`` (:class:`Row`)."""
    row = EXCHANGES[exchange]
    pairs = dict(item.split("=", 1) for item in variant)
    out = [*variant, *row.overrides]
    if row.sgd_rate and pairs.get("train.optimizer") == "sgd" and "train.lr" in pairs:
        out.append(f"{row.sgd_rate}={pairs['train.lr']}")
    return out


PATCHES = 4096  # training patches per site the measures read
TEST_SAMPLE = 60  # anomalous and as many normal test images per round (test_ratio, AUROC)


def effective_rank(rows: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred rows (Roy & Vetterli
    2007): C for isotropic features, 1 for features on one line."""
    s = torch.linalg.svdvals((rows - rows.mean(0)).double())
    p = s / s.sum().clamp_min(1e-12)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _sample(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k]


def _test_sample(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    idx = []
    for label in (0, 1):
        where = torch.nonzero(labels == label).flatten()
        idx.append(where[_sample(len(where), TEST_SAMPLE, seed + label)])
    return torch.cat(idx)


@torch.no_grad()
def site_measures(run: SiteRound, records: dict) -> dict:
    """The collapse measures of one site's head against the summary it scores with (the
    evaluation message's ``records``)."""
    cfg = run.cfg
    det, data = run.detector, run.data
    head = det.module()
    head.eval()
    feats = data.train.features
    n_img = min(len(feats), max(1, -(-PATCHES // (feats.shape[2] * feats.shape[3]))))
    x = feats[_sample(len(feats), n_img, 0)].to(torch.float32)
    f_rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    m = head(x)
    m_rows = m.permute(0, 2, 3, 1).reshape(-1, m.shape[1])
    keep = _sample(len(m_rows), PATCHES, 1)
    f_rows, m_rows = f_rows[keep], m_rows[keep]
    out = {"rank": effective_rank(m_rows), "rank_input": effective_rank(f_rows),
           "spread_input": float(f_rows.std(0).mean())}
    out["spread"] = float(m_rows.std(0).mean()) / max(out["spread_input"], 1e-12)
    gen = head.generator
    if isinstance(gen, MemoryGenerator):
        grid, p_hat = gen.paths(head.projection(x) + head.shift[:, None, None])
        g = float(torch.linalg.vector_norm(grid, dim=1).mean())
        p = float(torch.linalg.vector_norm(p_hat, dim=1).mean())
        out["grid_share"] = g / max(g + p, 1e-12)
    summary = run.exchange.scoring_summary(feats, records)
    bank = as_rows(det.global_bank(summary))
    dist, _ = NearestNeighbours(bank).search(m_rows, 1)
    out["train_distance"] = float(dist[:, 0].mean())
    out["bank_spacing"] = bank_spacing(bank)
    test = data.test
    idx = _test_sample(test.labels)
    s = score(det, test.features[idx], summary, cfg.dataset.scored_size()).image
    lab = test.labels[idx]
    out["test_ratio"] = float(s[lab == 1].mean() / s[lab == 0].mean().clamp_min(1e-12))
    out["test_sample_i_auroc"] = float(roc_auc_score(lab.numpy(), s.numpy()))
    return out


def measures(server: Server, transport: InProcess, rnd: int) -> dict:
    """:func:`site_measures` of every site after round ``rnd`` and their mean."""
    per: dict[str, dict] = {}
    for node in transport.nodes:
        env = Envelope(server.exchange.evaluation_payload(node.site),
                       {"round": rnd, "final": False})
        run = open_round(transport.cfg, node, env, transport.stores[node.site])
        per[str(node.site)] = site_measures(run, env.records)
    keys = sorted({k for v in per.values() for k in v})
    mean = {k: float(np.mean([v[k] for v in per.values() if k in v])) for k in keys}
    return {"mean": mean, "per_site": per}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_one(work: Path, name: str, base: list[str], overrides: list[str], seed: int,
            measured: bool = True) -> dict:
    """One run (reused from ``work`` when it ran with the same overrides); ``measured``:
    with the collapse measures every round (FedDyMem's shared bank; off for the weight
    exchanges, which score against banks of their own)."""
    key = f"{slug(name)}-seed{seed}"
    path = work / f"{key}.json"
    every = [*base, *overrides, f"train.seed={seed}"]
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("overrides") == every:  # the same run: reuse it
            return done
    log.info("== %s (seed %d): %s", name, seed, " ".join(overrides) or "(defaults)")
    r = run_in_process(compose(every), also_last=False, measure=measures if measured else None)
    r["overrides"] = every
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1))
    return r


def best_validation(run: dict, trained: bool = False) -> tuple[float, int]:
    """The best validation score of a run and its round (``trained``: rounds > 0 only)."""
    rounds = [h for h in run["history"] if h["round"] > 0 or not trained]
    h = max(rounds, key=lambda h: (h["val_score"], -h["round"]))
    return h["val_score"], h["round"]


def choose_variant(runs: dict) -> tuple[str | None, list[str]]:
    """The rule fixed before any test number was read (issue 53, item 2): among the
    experiments that train a head at five sites, the one of the highest validation score
    at a trained round (> 0) that beats both its own round 0 (the untrained head) and the
    best validation score of the same pipeline with the head off; ``None`` when no
    experiment trains its way past both. Returns the choice and one line per candidate."""
    lines, best = [], None
    for name, by_seed in runs.items():
        if "head off" in name or "one site" in name:
            continue
        r = by_seed.get("0")
        off = runs.get(head_off_of(name), {}).get("0")
        if r is None or off is None or len(r["history"]) < 2:
            continue
        trained, rnd = best_validation(r, trained=True)
        start = r["history"][0]["val_score"]
        ceiling = best_validation(off)[0]
        ok = trained > start and trained > ceiling
        lines.append(f"- {name}: best trained round {rnd} at {trained:.4f}; untrained "
                     f"{start:.4f}; head off {ceiling:.4f}: "
                     f"{'learns' if ok else 'does not learn past both'}")
        if ok and (best is None or trained > best[0]):
            best = (trained, name)
    return (None if best is None else best[1]), lines


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(payload: dict) -> str:
    runs = payload["runs"]
    lines = [
        "FedDyMem's trained head on MTD (DifferNet split), 224 px, Lite0, 5 sites, Dirichlet "
        f"alpha 0.1, partition seed 0, {payload['rounds']} training rounds after round 0, one "
        "epoch each; one process. Every switch was fixed before any run "
        "(benchmarks/feddymem_head.py). Validation: held-out normal training images and one "
        "synthetic defect on each, (image + pixel AUROC) / 2. Round 0 is the bank of the "
        "untrained head.", "",
        "## Per round", "",
        f"Per cell: validation score / test I-AUROC on a fixed sample of {TEST_SAMPLE} "
        f"anomalous and {TEST_SAMPLE} normal test images (mean over sites). The round "
        "validation keeps is bold; the last column is that round on the whole test set.", "",
        "| experiment | " + " | ".join(f"round {r}" for r in range(payload["rounds"] + 1))
        + " | kept: I-AUROC / P-AUROC / PRO |",
        "|---" * (payload["rounds"] + 3) + "|"]
    for name, by_seed in runs.items():
        for seed, r in by_seed.items():
            cells = []
            for h in r["history"]:
                c = (f"{h['val_score']:.3f} / "
                     f"{_f(h['measures']['mean'].get('test_sample_i_auroc'))}")
                cells.append(f"**{c}**" if h["round"] == r["chosen_round"] else c)
            cells += ["-"] * (payload["rounds"] + 1 - len(cells))
            t = r["test"] or {}
            label = name if len(by_seed) == 1 else f"{name} (seed {seed})"
            lines.append(f"| {label} | " + " | ".join(cells) + " | "
                         f"{_f(t.get('i_auroc'))} / {_f(t.get('p_auroc'))} / "
                         f"{_f(t.get('pro'))} |")
    lines += ["", "## Collapse measures (mean over sites), first and last round", "",
              "| experiment | loss (last) | rank (input) | rank | spread | grid share "
              "| train distance / bank spacing | test ratio |", "|---" * 8 + "|"]
    for name, by_seed in runs.items():
        r = next(iter(by_seed.values()))
        first, last = r["history"][0]["measures"]["mean"], r["history"][-1]["measures"]["mean"]

        def pair(key: str, a: dict = first, b: dict = last) -> str:
            return f"{_f(a.get(key), 2)} -> {_f(b.get(key), 2)}"

        def ratio(m: dict) -> str:
            return _f(m["train_distance"] / max(m["bank_spacing"], 1e-12), 2)

        lines.append(f"| {name} | {r['history'][-1]['loss']:.4f} | "
                     f"{first['rank_input']:.1f} | {pair('rank')} | {pair('spread')} | "
                     f"{pair('grid_share')} | {ratio(first)} -> {ratio(last)} | "
                     f"{pair('test_ratio')} |")
    chosen, why = choose_variant(runs)
    lines += ["", "## The variant validation chooses", "",
              "Rule, fixed before any test number was read: among the five-site experiments "
              "that train a head, the highest validation score at a trained round that beats "
              "both the same run's round 0 and the same pipeline with the head off.", "",
              *why, "", f"Chosen: **{chosen or 'none: no experiment trains past both'}**"]
    lines += confirm_markdown(payload.get("confirm"))
    lines += exchanges_markdown(payload.get("exchanges"), payload.get("confirm"))
    if payload.get("notes"):
        lines += ["", "## Notes", "", *payload["notes"]]
    commands = payload.get("commands") or [payload["command"]]
    lines += ["", "Commands (in order):" if len(commands) > 1 else "Command:",
              *(f"`{c}`" for c in commands)]
    return "\n".join(lines)


def confirm_markdown(confirm: dict | None) -> list[str]:
    """The chosen variant against its pipeline with the head off, over seeds."""
    if not confirm or not confirm.get("runs"):
        return []
    lines = ["", f"## The chosen variant over seeds ({confirm['rounds']} rounds)", "",
             "Each seed keeps the round of its best validation score; test on the whole "
             "test set, mean ± std over seeds.", "",
             "| run | seeds | rounds kept | validation (kept) | I-AUROC | P-AUROC | PRO |",
             "|---|---|---|---|---|---|---|"]
    means = {}
    for name, by_seed in confirm["runs"].items():
        rs = list(by_seed.values())

        def ms(key: str, rs: list = rs) -> str:
            v = [r["test"][key] for r in rs if key in r["test"]]
            return f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "-"

        means[name] = float(np.mean([r["test"]["i_auroc"] for r in rs]))
        val = np.mean([best_validation(r)[0] for r in rs])
        lines.append(f"| {name} | {', '.join(by_seed)} | "
                     f"{', '.join(str(r['chosen_round']) for r in rs)} | {val:.4f} | "
                     f"{ms('i_auroc')} | {ms('p_auroc')} | {ms('pro')} |")
    variant = confirm["variant"]
    off = head_off_of(variant)
    if variant in means and off in means:
        gain = means[variant] - means[off]
        lines += ["", f"Trained head minus head off: {gain:+.4f} I-AUROC (target: at least "
                  f"+0.01): {'met' if gain >= 0.01 else 'missed'}."]
    return lines


def exchanges_markdown(table: dict | None, confirm: dict | None) -> list[str]:
    """The chosen variant under every exchange (the paper's Table I), over seeds."""
    if not table or not table.get("runs"):
        return []
    lines = ["", f"## The chosen variant under every exchange ({table['rounds']} rounds)", "",
             f"Variant: {table['variant']}. Each seed keeps the round of its best validation "
             "score; test on the whole test set, mean ± std over the seeds run (a row with "
             "fewer seeds than the others is still running). `summary` is FedDyMem's own "
             "exchange of memory banks (the confirmation's runs); the others exchange the "
             "head's weights and score each site against a bank of its own. The head has no "
             "BatchNorm except in the rows `fedbn` (FedBN keeps it local) and `summary, "
             "BatchNorm`. MB: what a site uploads per round.", "",
             "| exchange | seeds | rounds kept | validation (kept) | I-AUROC | P-AUROC | PRO "
             "| MB up / round |", "|---|---|---|---|---|---|---|---|"]
    means: dict[str, tuple[float, int]] = {}
    for name, by_seed in table["runs"].items():
        rs = list(by_seed.values())

        def ms(key: str, rs: list = rs) -> str:
            v = [r["test"][key] for r in rs if key in r["test"]]
            return f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "-"

        means[name] = (float(np.mean([r["test"]["i_auroc"] for r in rs])), len(rs))
        val = np.mean([best_validation(r)[0] for r in rs])
        mb = np.mean([r["upload_bytes_per_client"] for r in rs]) / 1e6
        lines.append(f"| {name} | {', '.join(by_seed)} | "
                     f"{', '.join(str(r['chosen_round']) for r in rs)} | {val:.4f} | "
                     f"{ms('i_auroc')} | {ms('p_auroc')} | {ms('pro')} | {mb:.2f} |")
    off = (confirm or {}).get("runs", {}).get(head_off_of(table["variant"]))
    if off:
        v = [r["test"]["i_auroc"] for r in off.values()]
        lines += ["", f"The same pipeline with the head off (nothing trained; "
                  f"seeds {', '.join(off)}): I-AUROC {np.mean(v):.4f} ± {np.std(v):.4f}."]
    if MAIN in means:
        own, n = means[MAIN]
        behind = {k: v for k, (v, m) in means.items() if not EXCHANGES[k].own and v >= own}
        done = all(m == n for _, m in means.values())
        missing = [e for e in DEFAULT_EXCHANGES if e not in means]
        verdict = ("missed: " + ", ".join(f"{k} {v:.4f}" for k, v in behind.items())
                   + f" at or above FedDyMem's {own:.4f}" if behind
                   else f"not decided: no row yet for {', '.join(missing)}" if missing
                   else "met: FedDyMem ahead of every weight exchange")
        lines += ["", f"Target (FedDyMem ahead of every weight exchange, I-AUROC): {verdict}"
                  + ("" if done else " (not every row has every seed yet)") + "."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="MTD root (raw layout)")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds after round 0")
    parser.add_argument("--only", nargs="*", default=None, help="experiments to run (names)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-head"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="feddymem_head")
    parser.add_argument("--confirm-rounds", type=int, default=6,
                        help="rounds of the chosen variant's confirmation, beside its pipeline "
                             "with the head off (0: none)")
    parser.add_argument("--confirm-seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--exchanges", nargs="*", default=DEFAULT_EXCHANGES,
                        choices=list(EXCHANGES),
                        help="exchanges of the chosen variant's head (the paper's Table I; "
                             "none: skip)")
    parser.add_argument("--exchange-seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every run")
    args = parser.parse_args()
    setup_logging()
    unknown = set(args.only or ()) - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiment(s) {sorted(unknown)}; known: {list(EXPERIMENTS)}")
    base = ["dataset.name=mtd", f"dataset.root={Path(args.root).resolve()}",
            "num_clients=5", "partition.alpha=0.1", "partition.seed=0", "train.local_epochs=1",
            f"train.rounds={args.rounds}", "backbone.cache=disk",
            "backbone.cache_dir=/tmp/fedad-featcache", *args.overrides]
    out_json = args.out / f"{args.name}.json"
    payload = {"command": command_line(), "machine": machine(), "rounds": args.rounds,
               "experiments": EXPERIMENTS, "runs": {}, "notes": []}
    if out_json.is_file():  # keep what an earlier invocation measured (and its notes)
        old = json.loads(out_json.read_text())
        payload["runs"], payload["notes"] = old.get("runs", {}), old.get("notes", [])
        payload.update({k: old[k] for k in ("confirm", "exchanges") if k in old})
        # every invocation that added to these results, oldest first
        earlier = old.get("commands", [old.get("command")])
        payload["commands"] = [c for c in earlier if c and c != payload["command"]]
        payload["commands"].append(payload["command"])
    for name, overrides in EXPERIMENTS.items():
        if args.only is not None and name not in args.only:
            continue
        for seed in args.seeds:
            r = run_one(args.work, name, base, overrides, seed)
            payload["runs"].setdefault(name, {})[str(seed)] = r
            payload["runs"] = {n: payload["runs"][n] for n in EXPERIMENTS if n in payload["runs"]}
            write_results(args.out, args.name, payload, markdown(payload))
    chosen, _ = choose_variant(payload["runs"])
    if chosen is not None and args.confirm_rounds > 0:
        # the chosen variant and the same pipeline with the head off, longer and at three
        # seeds of the heads, the K-means and the shuffling (the sites stay the same)
        base = [*base, f"train.rounds={args.confirm_rounds}"]
        confirm = payload.setdefault("confirm", {})
        if confirm.get("variant") != chosen or confirm.get("rounds") != args.confirm_rounds:
            confirm.clear()
        confirm.update({"variant": chosen, "rounds": args.confirm_rounds})
        runs = confirm.setdefault("runs", {})
        for name in (chosen, head_off_of(chosen)):
            for seed in args.confirm_seeds:
                r = run_one(args.work / f"confirm-{args.confirm_rounds}", name, base,
                            EXPERIMENTS[name], seed)
                runs.setdefault(name, {})[str(seed)] = r
                write_results(args.out, args.name, payload, markdown(payload))
    if chosen is not None and args.exchanges and args.confirm_rounds > 0:
        table = payload.setdefault("exchanges", {})
        if table.get("variant") != chosen or table.get("rounds") != args.confirm_rounds:
            table.clear()
        table.update({"variant": chosen, "rounds": args.confirm_rounds})
        runs = table.setdefault("runs", {})
        for seed in args.exchange_seeds:  # seed-major: every exchange's first seed first
            for ex in args.exchanges:
                if EXCHANGES[ex].confirmation:  # FedDyMem itself: the confirmation's run
                    r = run_one(args.work / f"confirm-{args.confirm_rounds}", chosen, base,
                                EXPERIMENTS[chosen], seed)
                else:
                    r = run_one(args.work / f"exchanges-{args.confirm_rounds}", ex, base,
                                exchange_overrides(EXPERIMENTS[chosen], ex), seed,
                                measured=False)
                runs.setdefault(ex, {})[str(seed)] = r
                table["runs"] = {e: runs[e] for e in EXCHANGES if e in runs}
                runs = table["runs"]
                write_results(args.out, args.name, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
