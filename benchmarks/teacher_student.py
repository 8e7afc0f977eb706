"""DDPM-synthesised defects and the asymmetric teacher-student (seed 000, first abstract;
``detector=asymst``) on a real dataset, centralized and federated.

    python benchmarks/teacher_student.py --root ../shared/data/mtd [--choose]
        [--rows ROW ...] [--work DIR] [--out DIR] [--name NAME] [-- key=value ...]

Rows (``--rows``; all by default), every one a full run of the engine in this process (the
same sites, messages and aggregation as a Flower run, :mod:`fedad.federation.in_process`):

* ``centralized``: one site with every training image, the same optimiser steps in the
  same rounds with batches 5x as large (:func:`benchmarks._resumable.centralized_of`);
* ``fedavg``: 5 sites (Dirichlet alpha 0.1 over acquisition conditions), FedAvg;
* ``scaffold``: the same sites, SCAFFOLD (plain SGD at its own rates, ``scaffold.*``);
* ``cutpaste``: as ``fedavg`` with cut-paste/Perlin/scratch defects instead of the DDPM's
  (no DDPM phase; the student's and head's steps the same);
* ``nohead``: as ``fedavg`` without the segmentation head (the levels' cosine maps
  multiplied score; no head phase);
* ``padim-federated``: fedad's PaDiM on the same 5 sites (frozen Lite0 features, its exact
  statistics exchange): the untrained detector the trained one is measured against.

Every value is the config's default and its step budget's (``budget=cpu``,
``fedad/detectors/asymst/budgets.py``), fixed a priori or chosen on the validation split
(docs/asymst.md says which); nothing is chosen on the test set: the last round is the
model (no round picked). Each row's run folder is under ``--work``; a row interrupted
(killed, out of time) resumes from its last checkpointed round when the script is run
again with the same ``--work``, and a finished row is read back, not re-run.

Per row: I-AUROC, P-AUROC, PRO (mean over sites; the test set is the shared one), the
validation split's I-AUROC (synthetic defects on held-out training normals), the MB a site
uploads per round, the seconds of each stage summed over sites (DDPM training, drawing the
DDPM sample pool, student, head, evaluation) and each phase's steps and loss curve (first
and last round's mean: is it still learning at the end?).

``--choose``: before any row, the DDPM defects' noise level ``asymst.t_start`` is chosen on
the validation split (held-out training normals, each also with a synthetic defect): one
centralized run per value of :data:`T_START` (1.0 is pure noise, ``start=noise``) at the
step budget with the federated rows' batches (a fifth of a row's compute), scored on the
validation split alone; the value of the best mean of validation image and pixel AUROC wins
(the lower on ties; when the lowest wins, the grid is widened below it) and is written to
the results, with every value's scores, before any test image is scored; the rows then use
it. Values already tried are read back, not re-run.

``--choose-scaffold``: after ``--choose`` and before any row, SCAFFOLD's plain-SGD rate
``scaffold.lr`` (every part) is chosen the same way: one site (where SCAFFOLD's correction is
zero, so plain SGD at the rate) at the step budget with the federated rows' batches, per
value of :data:`SCAFFOLD_LR`, scored on the validation split alone; the best mean of
validation image and pixel AUROC wins (the lower rate on ties; a winner at an edge widens
the grid beyond it; a diverged rate loses). The ``scaffold`` row then uses it.

With pixel masks, a realism measure of the synthetic defects: the Frechet distance between
Gaussians fitted to Lite0 features (stride 8) averaged over each defect region, of DDPM
defects, cut-paste defects and normal regions, each against the real defects' (lower is
closer). Without masks (image-level-only data) the pixel metrics and the realism measure
are left out. A picture of DDPM defects beside cut-paste ones and real ones is written to
``<out>/<name>_defects.png``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._choice import choose_on_validation, widen_rate  # noqa: E402
from benchmarks._common import write_results  # noqa: E402
from benchmarks._resumable import (  # noqa: E402
    base_flat,
    by_phase,
    centralized_of,
    results_payload,
    row_parser,
    run_row,
)
from fedad.config.flat import from_flat  # noqa: E402
from fedad.config.schema import RunConfig  # noqa: E402
from fedad.detectors.asymst.detector import teacher_for  # noqa: E402
from fedad.detectors.asymst.synthesis import classical_defect  # noqa: E402
from fedad.detectors.registry import feature_config, label, resolve  # noqa: E402
from fedad.diffusion.defects import paste, perlin_mask  # noqa: E402
from fedad.errors import ConfigError  # noqa: E402
from fedad.federation.compose import check  # noqa: E402
from fedad.federation.site_data import load_client_data  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
ROWS = {
    "centralized": {},
    "fedavg": {"exchange": "fedavg"},
    "scaffold": {"exchange": "scaffold"},
    "cutpaste": {"exchange": "fedavg", "asymst.synthesis": "cutpaste"},
    "nohead": {"exchange": "fedavg", "asymst.seg_head": False},
    # the untrained frozen detector on the same sites, the row asymst must pass
    "padim-federated": {"detector": "padim", "exchange": "summary"},
}

# asymst.t_start tried by --choose (fractions of T; 1.0: from pure noise), fixed before
# any run: a low, the default's, a high noise level and none of the image left. When the
# lowest wins the grid is widened below it (a third of it, down to WIDEST); 1.0 is the
# top of the range
T_START = (0.1, 0.3, 0.6, 1.0)
WIDEST = 0.01


def choose(base: dict, payload: dict, out: Path, name: str) -> float:
    """``asymst.t_start`` chosen on the validation split (``--choose``), kept in
    ``payload["selection"]``."""
    def widen(grid: list[float], best: float) -> float | None:  # the lowest won: below it
        return round(best / 3, 4) if best == grid[0] and best / 3 >= WIDEST else None

    return choose_on_validation(
        base, payload, lambda d: write_results(out, name, d, markdown(d)), field="t_start",
        record="selection", grid=T_START,
        changes=lambda v: {"asymst.t_start": v}, widen=widen,
        how="centralized, the step budget at the federated rows' batch, validation split "
            "only")


# scaffold.lr tried by --choose-scaffold (SCAFFOLD's plain-SGD rate, every part), fixed
# before any run: the a priori 0.01 (which under-trained every phase in the same steps) and
# three rates above it a factor ~3 apart. A winner at either edge widens the grid by a factor
# 3 beyond it, within LR_RANGE
SCAFFOLD_LR = (0.01, 0.03, 0.1, 0.3)
LR_RANGE = (1e-3, 3.0)


def choose_scaffold(base: dict, payload: dict, out: Path, name: str) -> float:
    """``scaffold.lr`` chosen on the validation split (``--choose-scaffold``), kept in
    ``payload["scaffold_selection"]``; a rate at which plain SGD diverges loses."""
    return choose_on_validation(
        base, payload, lambda d: write_results(out, name, d, markdown(d)), field="lr",
        record="scaffold_selection", grid=SCAFFOLD_LR, widen=widen_rate(*LR_RANGE),
        changes=lambda v: {"exchange": "scaffold", "scaffold.lr": v, "scaffold.part_lr": []},
        how="one site (SCAFFOLD's correction is then zero: plain SGD at the rate), the step "
            "budget at the federated rows' batch, validation split only; one rate for every "
            "part (ddpm, student, head)")


def row_config(base: dict, row: str) -> RunConfig:
    """The row's config: ``base`` (dotted keys) with the row's changes."""
    cfg = from_flat({**base, **ROWS[row]})
    if row == "centralized":
        cfg.exchange = "fedavg"
        cfg = centralized_of(cfg, 5)
    else:
        cfg.eval_every = 10**9  # the final round only
    cfg.examples = 0
    return check(resolve(cfg))


def summarise(cfg: RunConfig, result: dict) -> dict:
    rounds = result["rounds"]
    phases = by_phase(result)
    stage = {p: v["seconds"] for p, v in phases.items()}
    stage["synthesis"] = sum(r["train"]["seconds-client-sum"].get("seconds-synthesis", 0.0)
                             for r in rounds)
    stage["evaluation"] = sum((r.get("evaluate") or {}).get("seconds-client-sum", {}).get(
        "seconds-eval", 0.0) for r in rounds)
    final = result["final"]["per_client"]
    keys = [k for k in ("i_auroc", "p_auroc", "pro", "val_i_auroc", "val_p_auroc")
            if all(k in v for v in final.values())]
    up = [r["bytes"]["received_per_client"] for r in rounds]
    return {"label": label(cfg), "sites": len(final),
            **{k: float(np.mean([v[k] for v in final.values()])) for k in keys},
            "i_auroc_spread": float(np.ptp([v["i_auroc"] for v in final.values()])),
            "mb_up_per_round": float(np.mean(up)) / 1e6, "rounds": len(rounds),
            "seconds": stage, "phases": phases,
            "fallback_sites": sorted({s for r in rounds for s in r["train"].get("site-notes", {})})}


# -- realism of the synthetic defects ------------------------------------------------------
def region_features(teacher, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """One vector per image: the teacher's stride-8 features averaged over its region."""
    out = []
    for x, m in zip(images.split(16), masks.split(16), strict=True):
        with torch.no_grad():
            f = teacher(x)[1]
        mm = torch.nn.functional.interpolate(m[:, None].float(), size=f.shape[-2:],
                                             mode="area")[:, 0]
        w = mm / mm.flatten(1).sum(1).clamp_min(1e-6)[:, None, None]
        out.append(torch.einsum("bchw,bhw->bc", f, w).numpy())
    return np.concatenate(out).astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of Gaussian fits."""
    from scipy import linalg

    ma, mb = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sa @ sb)
    return float(((ma - mb) ** 2).sum() + np.trace(sa + sb - 2 * np.real(root)))


def realism(cfg: RunConfig, folder: Path, out: Path, name: str, count: int = 160) -> dict:
    """Frechet distances to the real defects' region features, and the picture."""
    cfg = feature_config(cfg)
    data = load_client_data(cfg, 0, 1)
    test = data.test
    if test.masks is None or not bool((test.labels == 1).any()):
        return {"skipped": "no pixel masks (image-level-only data)"}
    state = torch.load(folder / "site-0" / "state.pt", weights_only=True)
    pool = state.get("pool")
    if pool is None:
        return {"skipped": "no DDPM pool in the run"}
    teacher = teacher_for(cfg, "cpu")
    rng = np.random.default_rng(0)
    normals = data.train.features[rng.permutation(len(data.train))[:count]].float()
    unit = teacher.to_unit(normals)
    made = {"ddpm": [paste(x, pool[int(rng.integers(len(pool)))], rng, cfg.asymst.opacity)
                     for x in unit],
            "cutpaste": [classical_defect(x, rng) for x in unit]}
    normal_masks = torch.stack([torch.from_numpy(perlin_mask(unit.shape[-1], rng))
                                for _ in unit])
    sets = {k: (teacher.from_unit(torch.stack([i for i, _ in v])),
                torch.stack([m for _, m in v])) for k, v in made.items()}
    sets["normal regions"] = (normals, normal_masks)
    bad = torch.nonzero(test.labels == 1).flatten()
    real = (test.features[bad].float(), test.masks[bad] > 0)
    ref = region_features(teacher, *real)
    dist = {k: frechet(region_features(teacher, *v), ref) for k, v in sets.items()}
    picture(teacher, sets, real, out / f"{name}_defects.png")
    return {"frechet_to_real_defects": dist, "regions": {k: len(v[0]) for k, v in sets.items()}
            | {"real defects": len(bad)}}


def picture(teacher, sets: dict, real, path: Path, n: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("DDPM defects", *sets["ddpm"]), ("cut-paste defects", *sets["cutpaste"]),
            ("real defects", *real)]
    fig, axes = plt.subplots(len(rows), n, figsize=(2.2 * n, 2.3 * len(rows)))
    for r, (title, images, masks) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = ((teacher.to_unit(images[c:c + 1])[0] + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img.clip(0, 1))
            ax.contour(masks[c].numpy().astype(float), levels=[0.5], colors="r",
                       linewidths=0.7)
            ax.axis("off")
            if c == 0:
                ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(payload: dict) -> str:
    lines = [f"# DDPM defects + asymmetric teacher-student ({payload['dataset']})", "",
             "| row | run | I-AUROC | P-AUROC | PRO | val I-AUROC | rounds | MB up/round | "
             "DDPM s | pool s | student s | head s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, r in payload["rows"].items():
        s = r["seconds"]

        def f(k, r=r):
            return f"{r[k]:.3f}" if k in r else "-"
        lines.append(f"| {row} | {r['label']} ({r['sites']} site(s)) | {f('i_auroc')} | "
                     f"{f('p_auroc')} | {f('pro')} | {f('val_i_auroc')} | "
                     f"{r.get('rounds', '-')} | {r['mb_up_per_round']:.2f} | "
                     + " | ".join(f"{s.get(k, 0.0):.0f}" for k in
                                  ("ddpm", "synthesis", "student", "head", "evaluation"))
                     + " |")
    lines += ["", "Steps and loss per phase (mean over sites of a round's loss; first -> "
              "last round, and the last round's change on the one before):", "",
              "| row | phase | steps | rounds | loss first -> last | last change |",
              "|---|---|---|---|---|---|"]
    for row, r in payload["rows"].items():
        for phase, v in r.get("phases", {}).items():
            if not v["steps"]:
                continue  # a detector without a step budget (the frozen PaDiM row)
            ls = v["losses"]
            change = f"{ls[-1] - ls[-2]:+.4f}" if len(ls) > 1 else "-"
            lines.append(f"| {row} | {phase} | {v['steps']} | {v['rounds']} | "
                         f"{ls[0]:.4f} -> {ls[-1]:.4f} | {change} |")
    for record, field, what in (
            ("selection", "t_start", "asymst.t_start chosen on the validation split before "
                                     "any test image was scored"),
            ("scaffold_selection", "lr", "scaffold.lr chosen on the validation split before "
                                         "the SCAFFOLD row's test images were scored")):
        sel = payload.get(record)
        if sel:
            lines += ["", f"{what} ({sel['how']}): " + ", ".join(
                f"{t[field]:g}: " + (f"val I-AUROC {t['val_i_auroc']:.3f} / P-AUROC "
                                     f"{t['val_p_auroc']:.3f}"
                                     if "failed" not in t else "failed")
                for t in sel["tried"]) + f"; chosen {sel['chosen']:g}"]
    real = payload.get("realism", {})
    if "frechet_to_real_defects" in real:
        lines += ["", "Realism: Frechet distance of region features (Lite0, stride 8) to the "
                  "real defects' (lower is closer)", "", "| defects | distance |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in real["frechet_to_real_defects"].items()]
    elif real:
        lines += ["", f"Realism: {real.get('skipped')}"]
    if payload.get("notes"):  # what the numbers cannot say themselves (kept across runs)
        lines += ["", "Notes:", *[f"- {n}" for n in payload["notes"]]]
    lines += ["", "Commands:", *[f"- `{c}`" for c in payload["commands"]]]
    return "\n".join(lines)


def main() -> None:
    p = row_parser(__doc__, list(ROWS), "/tmp/fedad-teacher-student", "teacher_student")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    p.add_argument("--choose", action="store_true",
                   help="choose asymst.t_start on the validation split first")
    p.add_argument("--choose-scaffold", action="store_true",
                   help="choose scaffold.lr on the validation split before the rows")
    p.add_argument("overrides", nargs="*", help="RunConfig overrides (after --)")
    args = p.parse_args()
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the budget preset's values (resolved per row), then the overrides
    flat = base_flat(p, args, {"detector": "asymst", "exchange": "fedavg"})
    try:
        check(from_flat(flat))  # a bad override stops here, before any run
    except ConfigError as exc:
        p.error(str(exc))
    payload = results_payload(args)
    if args.choose:
        flat["asymst.t_start"] = choose(flat, payload, args.out, args.name)
    if args.choose_scaffold:
        flat["scaffold.lr"] = choose_scaffold(flat, payload, args.out, args.name)
        flat["scaffold.part_lr"] = []
    for row in args.rows:
        cfg = row_config(flat, row)
        folder = args.work / row
        t = time.perf_counter()
        result = run_row(cfg, folder)
        payload["rows"][row] = {**summarise(cfg, result), "wall": time.perf_counter() - t}
        log.info("%s: %s", row, {k: v for k, v in payload["rows"][row].items()
                                 if k in ("i_auroc", "p_auroc", "pro")})
        write_results(args.out, args.name, payload, markdown(payload))
    src = next((r for r in ("centralized", "fedavg") if (args.work / r / "site-0").exists()),
               None)
    if src is not None:
        payload["realism"] = realism(row_config(flat, src), args.work / src, args.out,
                                     args.name)
        payload["realism"]["run"] = src
    write_results(args.out, args.name, payload, markdown(payload))


if __name__ == "__main__":
    main()
