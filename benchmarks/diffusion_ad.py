"""Anomalies removed as noises (seed 003; ``detector=diffad``) on a real dataset, centralized
and federated, beside PaDiM on the same images.

    python benchmarks/diffusion_ad.py --root ../shared/data/mtd [--rows ROW ...]
        [--work DIR] [--out DIR] [--name NAME] [--reconstruct N] [--choose-scaffold]
        [-- key=value ...]

Rows (``--rows``; all by default), each a full in-process run of the engine
(:mod:`benchmarks._resumable`: resumed from its checkpoint when interrupted, read back when
finished):

* ``centralized``: diffad, one site with every training image (FedAvg of one), the same
  optimiser steps in the same rounds with batches 5x as large
  (:func:`benchmarks._resumable.centralized_of`);
* ``fedavg``: diffad, 5 sites (Dirichlet alpha 0.1 over acquisition conditions), FedAvg;
* ``scaffold``: the same sites, SCAFFOLD (plain SGD at its own rate, ``scaffold.lr``,
  0.01 a priori: :class:`fedad.exchanges.config.ScaffoldConfig`);
* ``padim-centralized`` / ``padim-federated``: fedad's PaDiM on the same sites (its exact
  statistics exchange), the baseline the targets compare with.

Every value is the config's default and its step budget's (``budget=cpu``,
``fedad/detectors/diffad/budgets.py``), fixed a priori (docs/diffad.md says where each
comes from); the last round is the model; nothing is chosen on the test set. For each
diffad row the two maps of every site's final model are combined four ways on the shared
test set: the KL map alone, the feature map alone, Eq. 11 (the default) and the
code's plain sum (the run's own evaluation is Eq. 11's; sites of one process that hold one
global model compute the maps once). Reported: I-AUROC, P-AUROC, PRO (mean over sites), MB
uploaded per round, seconds of training, scoring seconds per test image, and for
``--reconstruct N`` defective test images the gradient-denoising reconstruction (Algorithm
1, site 0's model, the matching PaDiM row's statistics) with its seconds per image and the
PaDiM score before and after; a picture (image, mask, map, reconstruction) goes to
``<out>/<name>_example.png``. Without pixel masks (image-level-only data) only I-AUROC is
reported.

``--choose-scaffold``: before any row, SCAFFOLD's plain-SGD rate ``scaffold.lr`` is chosen
on the validation split's normal images (held-out training normals): one site (where
SCAFFOLD's correction is zero, so plain SGD at the rate) at the step budget with the
federated rows' batch, per value of :data:`SCAFFOLD_LR`; the lowest held-out objective
(``val_loss``: the training loss on the held-out normals under the EMA weights, at fixed
draws; :meth:`fedad.detectors.diffad.detector.DiffAD.held_out_loss`) wins, the lower rate on
ties; a winner at an edge widens the grid beyond it; a diverged rate loses. Not the
validation AUROCs: diffad's synthetic-defect validation is at chance for every model
measured (I-AUROC 0.48-0.53), so it cannot separate rates. The ``scaffold`` row then uses
the chosen rate; the choice and every rate's numbers are written before it runs.

The reconstruction's step rule is chosen on the validation split first (written down here
before any test number was seen): the paper's fixed ``s = 0.02`` raised PaDiM's score on
MTD, so each of :data:`STEP_RULES` (the paper's step, two smaller fixed steps, and
backtracking from 0.02) reconstructs the first ``--select N`` defective validation images
(synthetic defects on held-out training normals) with the config's rounds, and the rule
with the lowest mean ratio of PaDiM score after to before wins (ties: the earlier in the
list). The choice is written to the results before the test images are reconstructed.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._choice import (  # noqa: E402
    by_held_out_loss,
    choose_on_validation,
    widen_rate,
)
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
from fedad.detectors.base import FeatureShape  # noqa: E402
from fedad.detectors.diffad.detector import _MAPS  # noqa: E402
from fedad.detectors.registry import (  # noqa: E402
    check,
    client_seed,
    create,
    feature_config,
    label,
    resolve,
)
from fedad.errors import ConfigError  # noqa: E402
from fedad.evaluation.metrics import evaluate  # noqa: E402
from fedad.evaluation.objectives import gaussian_objective  # noqa: E402
from fedad.evaluation.saved_site import load_site, load_summary  # noqa: E402
from fedad.features.extractor import build_feature_extractor  # noqa: E402
from fedad.federation.centralized import centralized_config  # noqa: E402
from fedad.federation.site_data import load_client_data  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
ROWS = {
    "centralized": {"detector": "diffad", "exchange": "fedavg"},
    "fedavg": {"detector": "diffad", "exchange": "fedavg"},
    "scaffold": {"detector": "diffad", "exchange": "scaffold"},
    "padim-centralized": {"detector": "padim", "exchange": "summary"},
    "padim-federated": {"detector": "padim", "exchange": "summary"},
}
PADIM_OF = {"centralized": "padim-centralized", "fedavg": "padim-federated",
            "scaffold": "padim-federated"}
COMBINES = ("kl", "feature", "eq11", "sum")
# the reconstruction's step rules tried on validation, (rule, s); the paper's first
STEP_RULES = (("fixed", 0.02), ("fixed", 0.005), ("fixed", 0.00125), ("backtrack", 0.02))


# scaffold.lr tried by --choose-scaffold (SCAFFOLD's plain-SGD rate), fixed before any run:
# the a priori 0.01 (its row's loss ended at 0.338 where FedAvg's ended at 0.123) and three
# rates above it a factor ~3 apart; a winner at an edge widens the grid within LR_RANGE
SCAFFOLD_LR = (0.01, 0.03, 0.1, 0.3)
LR_RANGE = (1e-3, 3.0)


def choose_scaffold(base: dict, payload: dict, out: Path, name: str) -> float:
    """``scaffold.lr`` chosen on the held-out normals (``--choose-scaffold``), kept in
    ``payload["scaffold_selection"]``."""
    return choose_on_validation(
        base, payload, lambda d: write_results(out, name, d, markdown(d)), field="lr",
        record="scaffold_selection", grid=SCAFFOLD_LR, widen=widen_rate(*LR_RANGE),
        changes=lambda v: {**ROWS["scaffold"], "scaffold.lr": v, "scaffold.part_lr": []},
        criterion=by_held_out_loss,
        how="one site (SCAFFOLD's correction is then zero: plain SGD at the rate), the step "
            "budget at the federated rows' batch; the lowest held-out denoising loss on the "
            "validation split's normal images wins")


def row_config(base: dict, row: str) -> RunConfig:
    """The row's config: ``base`` (dotted keys) with the row's changes."""
    cfg = from_flat({**base, **ROWS[row]})
    if row == "centralized":
        cfg = centralized_of(cfg, 5)
    elif row.endswith("centralized"):
        cfg = centralized_config(cfg)
    else:
        cfg.eval_every = 10**9  # the final round only
    cfg.examples = 0
    return check(resolve(cfg))


def metrics_of(final: dict) -> dict:
    keys = [k for k in ("i_auroc", "p_auroc", "pro") if all(k in v for v in final.values())]
    return {k: float(np.mean([v[k] for v in final.values()])) for k in keys}


def summarise(cfg: RunConfig, result: dict) -> dict:
    rounds = result["rounds"]
    train = sum(sum(r["train"]["seconds-client-sum"].values()) for r in rounds)
    ev = [(r.get("evaluate") or {}).get("seconds-client-sum", {}) for r in rounds]
    final = result["final"]["per_client"]
    return {"label": label(cfg), "sites": len(final), **metrics_of(final),
            "mb_up_per_round": float(np.mean([r["bytes"]["received_per_client"]
                                              for r in rounds])) / 1e6,
            "seconds_train": train,
            "seconds_eval": float(sum(e.get("seconds-eval", 0.0) for e in ev)),
            "rounds": len(rounds), "phases": by_phase(result),
            **{k: float(np.mean([v[k] for v in final.values()])) for k in ("val_i_auroc",)
               if all(k in v for v in final.values())}}


def site_detectors(cfg: RunConfig, folder: Path, shape: FeatureShape):
    """Every site's final detector and the summary it scores with."""
    out = []
    for i in range(cfg.num_clients):
        state, _ = load_site(folder, i)
        det = create(cfg, shape, "cpu", seed=client_seed(cfg, i))
        det.load_state(state)
        out.append((det, load_summary(folder, i)))
    return out


def ablation(cfg: RunConfig, folder: Path, test) -> dict:
    """The four combinations of every site's two maps on the test set, and the scoring
    seconds per image (the first site's maps, computed once per distinct model)."""
    shape = FeatureShape(3, *test.features.shape[-2:])
    masks = None if test.masks is None else (test.masks > 0).numpy()
    rows: dict[str, list[dict]] = {k: [] for k in COMBINES}
    seconds = None
    _MAPS.clear()  # the first site's maps are computed here, so they are timed
    for det, summary in site_detectors(cfg, folder, shape):
        t = time.perf_counter()
        feature, kl = det.raw_maps(test.features, shape.height)
        if seconds is None:
            seconds = (time.perf_counter() - t) / len(test.features)
        for how in COMBINES:
            s = det.finish(feature, kl, how, summary)
            rows[how].append(evaluate(s.image.numpy(), test.labels.numpy(),
                                      s.maps.numpy() if masks is not None else None, masks))
    return {"combine": {how: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
                        for how, ms in rows.items()},
            "seconds_per_image_maps": seconds}


def reconstruction_setup(cfg: RunConfig, folder: Path, padim_cfg: RunConfig,
                         padim_folder: Path, shape: FeatureShape):
    """Site 0's diffad model and summary, and PaDiM's score (the PaDiM row's global
    statistics) as the objective."""
    (det, summary), *_ = site_detectors(cfg, folder, shape)
    pcfg = feature_config(padim_cfg)
    extractor, _ = build_feature_extractor(pcfg.backbone)
    padim = create(pcfg, FeatureShape(*extractor.output_shape(shape.height)), "cpu")
    objective = gaussian_objective(padim, load_summary(padim_folder), extractor, det.units())
    return det, summary, objective


def scores_before_after(det, objective, images: torch.Tensor, label: str):
    """PaDiM's score of ``images`` before and after reconstruction (one at a time), the
    seconds per image and the reconstructions."""
    units = det.units()
    t = time.perf_counter()
    out = torch.cat([det.reconstruct(x[None], objective, desc=f"{label} {i + 1}/{len(images)}")
                     for i, x in enumerate(images)])
    seconds = (time.perf_counter() - t) / max(1, len(images))
    with torch.no_grad():
        before = objective(units.to_unit(images)).tolist()
        after = objective(units.to_unit(out)).tolist()
    return before, after, seconds, out


def choose_step(det, objective, validation, count: int) -> tuple[dict, list[dict]]:
    """The step rule of :data:`STEP_RULES` with the lowest mean after/before PaDiM score
    ratio on the first ``count`` defective validation images (module docstring)."""
    bad = torch.nonzero(validation.labels == 1).flatten()[:count]
    images = validation.features[bad].float()
    base, tried = det.cfg.diffad, []
    for rule, size in STEP_RULES:
        det.cfg.diffad = replace(base, step_rule=rule, step_size=size)
        before, after, seconds, _ = scores_before_after(det, objective, images,
                                                        f"validation {rule} {size}")
        ratio = float(np.mean(np.divide(after, before)))
        tried.append({"step_rule": rule, "step_size": size, "ratio": ratio,
                      "seconds_per_image": seconds})
        log.info("validation: step rule %s s=%s: PaDiM score after/before %.3f", rule, size,
                 ratio)
    det.cfg.diffad = base
    best = min(tried, key=lambda r: r["ratio"])  # the first of equal ratios
    return {"step_rule": best["step_rule"], "step_size": best["step_size"]}, tried


def reconstruction(det, summary, objective, test, count: int, picture: Path) -> dict:
    """Algorithm 1 on the first ``count`` defective test images and the first normal one
    with ``det``'s config."""
    shape = FeatureShape(3, *test.features.shape[-2:])
    bad = torch.nonzero(test.labels == 1).flatten()[:count]
    images = test.features[bad].float()
    before, after, seconds, out = scores_before_after(det, objective, images, "reconstruction")
    good = torch.nonzero(test.labels == 0).flatten()[:1]
    normal = scores_before_after(det, objective, test.features[good].float(),
                                 "normal reconstruction")
    scores = det.score(images, summary, shape.height)
    draw(det.units(), images, None if test.masks is None else test.masks[bad], scores.maps,
         out, picture)
    return {"images": len(images), "seconds_per_image": seconds,
            "step_rule": det.cfg.diffad.step_rule, "step_size": det.cfg.diffad.step_size,
            "padim_score_before": before, "padim_score_after": after,
            "normal_padim_score_before": normal[0], "normal_padim_score_after": normal[1]}


def draw(units, images, masks, maps, recon, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), squeeze=False)
    for r in range(n):
        for c, (title, arr) in enumerate((("image", images[r]), ("map", None),
                                          ("reconstruction", recon[r]))):
            ax = axes[r, c]
            if arr is None:
                ax.imshow(maps[r].numpy(), cmap="jet")
            else:
                ax.imshow(((units.to_unit(arr[None])[0] + 1) / 2).permute(1, 2, 0)
                          .clamp(0, 1).numpy())
            if masks is not None and c < 2:
                ax.contour(masks[r].numpy().astype(float), levels=[0.5], colors="w",
                           linewidths=0.7)
            ax.axis("off")
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def f3(r: dict, k: str, digits: int = 3) -> str:
    return f"{r[k]:.{digits}f}" if r.get(k) is not None else "-"


def markdown(payload: dict) -> str:
    lines = [f"# Anomalies removed as noises: diffad beside PaDiM ({payload['dataset']})", "",
             "| row | run | I-AUROC | P-AUROC | PRO | MB up/round | train s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for row, r in payload["rows"].items():
        lines.append(f"| {row} | {r['label']} ({r['sites']} site(s)) | {f3(r, 'i_auroc')} | "
                     f"{f3(r, 'p_auroc')} | {f3(r, 'pro')} | {r['mb_up_per_round']:.2f} | "
                     f"{r['seconds_train']:.0f} | {r['seconds_eval']:.0f} |")
    phased = {row: r["phases"] for row, r in payload["rows"].items() if "phases" in r
              and not row.startswith("padim")}
    if phased:
        lines += ["", "Training (steps per site; mean over sites of a round's loss, first -> "
                  "last round, and the last round's change on the one before):", "",
                  "| row | steps | rounds | loss first -> last | last change |",
                  "|---|---|---|---|---|"]
        for row, ph in phased.items():
            for v in ph.values():
                ls = v["losses"]
                change = f"{ls[-1] - ls[-2]:+.4f}" if len(ls) > 1 else "-"
                lines.append(f"| {row} | {v['steps']} | {v['rounds']} | {ls[0]:.4f} -> "
                             f"{ls[-1]:.4f} | {change} |")
    abl = {row: r["ablation"] for row, r in payload["rows"].items() if "ablation" in r}
    if abl:
        lines += ["", "Maps combined (the same models; eq11 is the default, sum the code's):",
                  "", "| row | map | I-AUROC | P-AUROC | PRO |", "|---|---|---|---|---|"]
        for row, a in abl.items():
            lines += [f"| {row} | {how} | {f3(m, 'i_auroc')} | {f3(m, 'p_auroc')} | "
                      f"{f3(m, 'pro')} |" for how, m in a["combine"].items()]
        lines += ["", "Scoring seconds per test image (both maps, one site): " + ", ".join(
            f"{row} {a['seconds_per_image_maps']:.2f}" for row, a in abl.items())]
    rec = {row: r["reconstruction"] for row, r in payload["rows"].items()
           if "reconstruction" in r}
    for row, r in payload.get("step_selection", {}).items():
        lines += ["", f"Step rule chosen on validation ({row}; PaDiM score after / before "
                  "on defective validation images): " + ", ".join(
                      f"{t['step_rule']} s={t['step_size']} {t['ratio']:.3f}"
                      for t in r["tried"]) + f"; chosen: {r['chosen']}"]
    for row, r in rec.items():
        rule = f"{r.get('step_rule', 'fixed')} s={r.get('step_size', 0.02)}"
        lines += ["", f"Reconstruction ({row}, {r['images']} defective images, {rule}): "
                  f"{r['seconds_per_image']:.1f} s per image; PaDiM score "
                  + ", ".join(f"{a:.3g} -> {b:.3g}" for a, b in
                              zip(r["padim_score_before"], r["padim_score_after"],
                                  strict=True))]
        if "normal_padim_score_before" in r:
            lines[-1] += "; a normal test image " + ", ".join(
                f"{a:.3g} -> {b:.3g}" for a, b in zip(r["normal_padim_score_before"],
                                                      r["normal_padim_score_after"],
                                                      strict=True))
    sel = payload.get("scaffold_selection")
    if sel:
        lines += ["", "scaffold.lr chosen before the SCAFFOLD row's test images were scored "
                  f"({sel['how']}):", "",
                  "| scaffold.lr | held-out loss | val I-AUROC | val P-AUROC | loss first -> "
                  "last round | s | lost |", "|---|---|---|---|---|---|---|"]
        for t in sel["tried"]:
            ls = t["losses"]
            curve = f"{ls[0]:.4f} -> {ls[-1]:.4f}" if ls else "-"
            lines.append(f"| {t['lr']:g} | {f3(t, 'val_loss', 4)} | {f3(t, 'val_i_auroc')} | "
                         f"{f3(t, 'val_p_auroc')} | {curve} | {t['seconds']:.0f} | "
                         f"{t.get('failed', '')} |")
        lines += ["", f"Chosen: scaffold.lr = {sel['chosen']:g}"]
    if payload.get("notes"):  # what the numbers cannot say themselves (kept across runs)
        lines += ["", "Notes:", *[f"- {n}" for n in payload["notes"]]]
    lines += ["", "Commands:", *[f"- `{c}`" for c in payload["commands"]]]
    return "\n".join(lines)


def main() -> None:
    p = row_parser(__doc__, list(ROWS), "/tmp/fedad-diffusion-ad", "diffusion_ad")
    p.add_argument("--reconstruct", type=int, default=2,
                   help="defective test images to reconstruct per diffad row (0: none)")
    p.add_argument("--select", type=int, default=2,
                   help="defective validation images the step rule is chosen on (0: the "
                        "config's rule)")
    p.add_argument("--keep-ablation", action="store_true",
                   help="a row read back from the same finished run keeps the map "
                        "ablation already in the results (only the reconstruction reruns)")
    p.add_argument("--choose-scaffold", action="store_true",
                   help="choose scaffold.lr on the held-out normals before the rows")
    p.add_argument("overrides", nargs="*", help="RunConfig overrides (after --)")
    args = p.parse_args()
    setup_logging()
    # the budget preset's values (resolved per row), then the overrides
    flat = base_flat(p, args, {})
    try:
        for row in ROWS:
            row_config(flat, row)  # a bad override stops here, before any run
    except ConfigError as exc:
        p.error(str(exc))
    payload = results_payload(args)
    if args.choose_scaffold:  # written down before any row's test images are scored
        flat["scaffold.lr"] = choose_scaffold(flat, payload, args.out, args.name)
    # PaDiM rows first: a diffad row's reconstruction uses their statistics
    order = sorted(args.rows, key=lambda r: not r.startswith("padim"))
    for row in order:
        cfg = row_config(flat, row)
        folder = args.work / row
        t = time.perf_counter()
        entry = summarise(cfg, run_row(cfg, folder))
        if row in PADIM_OF:  # a diffad row
            test = load_client_data(feature_config(cfg), 0, 1).test
            earlier = payload["rows"].get(row, {})
            if args.keep_ablation and "ablation" in earlier \
                    and earlier.get("seconds_train") == entry["seconds_train"]:
                entry["ablation"] = earlier["ablation"]  # the same finished run's maps
            else:
                entry["ablation"] = ablation(cfg, folder, test)
            padim_row = PADIM_OF[row]
            if args.reconstruct and (args.work / padim_row / "global_summary.npz").is_file():
                det, summary, objective = reconstruction_setup(
                    cfg, folder, row_config(flat, padim_row), args.work / padim_row,
                    FeatureShape(3, *test.features.shape[-2:]))
                validation = load_client_data(feature_config(cfg), 0, 1).validation
                if args.select and validation is not None:
                    chosen, tried = choose_step(det, objective, validation, args.select)
                    # written down before the test images are reconstructed
                    payload.setdefault("step_selection", {})[row] = {"chosen": chosen,
                                                                     "tried": tried}
                    write_results(args.out, args.name, payload, markdown(payload))
                    det.cfg.diffad = replace(det.cfg.diffad, **chosen)
                entry["reconstruction"] = reconstruction(
                    det, summary, objective, test, args.reconstruct,
                    args.out / f"{args.name}_example.png")
        payload["rows"][row] = {**entry, "wall": time.perf_counter() - t}
        log.info("%s: %s", row, {k: v for k, v in entry.items()
                                 if k in ("i_auroc", "p_auroc", "pro")})
        write_results(args.out, args.name, payload, markdown(payload))


if __name__ == "__main__":
    main()
