"""What leaves a site, measured: differential privacy's cost in detection quality.

    python benchmarks/privacy.py --root ../shared/data/mtd [--parts utility] [key=value ...]

``utility``: PaDiM and PatchCore (``--detectors``) federated (5 sites, Dirichlet alpha
0.1, the summary exchange, in one process on fedad's engine) with ``privacy.epsilon`` in
``--epsilons``, without noise, and at epsilon 1e9 (clipped, negligible noise): I-AUROC
and (where the data has masks) P-AUROC and PRO on the test set. The
clip bound of each detector is fixed before any site's image is seen: the median L2 norm of
its feature rows over the embedded texture photos (public, :mod:`fedad.data.textures`).
The noise is seeded (``privacy.seed=0``) so the table can be reproduced. Runs on
image-level-only data (pixel columns then empty).

``leakage``: a feature-inversion decoder per feature space (PatchCore's patches, PaDiM's
channel subset; :mod:`fedad.privacy.inversion`) trained on the public textures' training
photos only, applied to what MTD sites upload (PatchCore coresets, the K-means centres of
their union, PaDiM's per-position means, and both with differential privacy at
``--leak-epsilon``); each decoded patch is scored against the nearest (pixel L2) of the
site's true training patches (PSNR, SSIM). For scale: random patches of the public textures'
*test* photos scored the same way, and the decoder on the site's own features against their
own patches (what it can do at best). FedDyMem's banks are not audited: they live in each
site's trained projection space, which the server never receives.

Writes ``privacy.{json,md,png}`` (and ``privacy_leakage.png``: the best-recovered patches)
to ``--out``; a part run again replaces its section and
keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from _inprocess import run_in_process  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.data.factory import build_dataset  # noqa: E402
from fedad.data.holdout import holdout_split  # noqa: E402
from fedad.detectors.base import BANK, FeatureShape  # noqa: E402
from fedad.detectors.registry import create, feature_config  # noqa: E402
from fedad.federation.site_data import extractor_for, load_client_data  # noqa: E402
from fedad.privacy.clipping import norm_quantile  # noqa: E402
from fedad.privacy.inversion import (  # noqa: E402
    decode,
    nearest_patches,
    patch_similarity,
    position_patches,
    train_decoder,
)
from fedad.progress import setup_logging  # noqa: E402
from partitions import site_indices  # noqa: E402

DETECTORS = ("padim", "patchcore")
EPSILONS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
CLIP_ONLY = 1e9  # an epsilon whose noise is negligible: what clipping alone costs
METRICS = ("i_auroc", "p_auroc", "pro")


def feature_rows(cfg, features: torch.Tensor) -> torch.Tensor:
    """The rows ``cfg``'s detector clips when it releases privately, ``(N, P, d)``."""
    return create(cfg, FeatureShape(*features.shape[1:])).private_rows(features)


def public_clip(detector: str, overrides: list[str]) -> float:
    """The median norm of ``detector``'s feature rows over the embedded texture photos'
    training images (one site holding all of them)."""
    cfg = feature_config(compose(["dataset=textures", f"detector={detector}",
                                  "num_clients=1", *overrides]))
    data = load_client_data(cfg, 0, 1)
    return norm_quantile(feature_rows(cfg, data.train.features), 0.5)


def utility(args) -> dict:
    old = (args.previous or {}).get("utility", {})
    out = {"delta": 1e-5, "clips": dict(old.get("clips", {})),
           "runs": [r for r in old.get("runs", [])
                    if r["detector"] not in args.detectors or r["epsilon"] not in args.epsilons]}
    for det in args.detectors:
        clip = public_clip(det, args.overrides)
        out["clips"][det] = clip
        print(f"{det}: clip {clip:.4g} (median feature-row norm on the public textures)",
              flush=True)
        for eps in args.epsilons:
            cfg = compose([f"dataset.name={args.dataset}",
                           f"dataset.root={Path(args.root).resolve()}",
                           f"detector={det}", "exchange=summary", "num_clients=5",
                           "partition.alpha=0.1", "partition.seed=0",
                           f"privacy.epsilon={eps}", f"privacy.clip={clip}",
                           "privacy.seed=0", *args.overrides])
            t = time.perf_counter()
            res = run_in_process(cfg)
            row = {"detector": det, "epsilon": eps,
                   **{k: res["test"].get(k) for k in METRICS},
                   "upload_bytes_per_client": res["upload_bytes_per_client"],
                   "seconds": time.perf_counter() - t}
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    out["runs"].sort(key=lambda r: (DETECTORS.index(r["detector"]), r["epsilon"]))
    return out


# -- leakage -----------------------------------------------------------------------------
SITES = 5
QUERIES = 1000  # decoded rows scored per upload and site (a seeded sample)
TRUTH = 50_000  # a site's true patches searched for the nearest (a seeded sample)


def pixels(cfg, dataset) -> torch.Tensor:
    """``(N, 3, S, S)`` images of ``dataset`` in ``[0, 1]`` (grey images as RGB)."""
    _, info = extractor_for(cfg)
    dataset.set_normalisation(info["mean"], info["std"])
    out = [dataset[i].image * dataset.std + dataset.mean for i in range(len(dataset))]
    return torch.stack(out).clamp(0, 1)


def fitted_images(cfg, site: int | None) -> torch.Tensor:
    """The training images a site fits on (``None``: the whole training set, one site), in
    the order of its features: its partition less the held-out images."""
    train = build_dataset(cfg.dataset, "train")
    if site is not None:
        train = train.subset(list(site_indices(cfg, site, SITES)))
    fit, _ = holdout_split([r.name for r in train.records], cfg.calibration.holdout,
                           cfg.calibration.seed)
    return pixels(cfg, train.subset(fit))


def sample(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def score(decoded: torch.Tensor, truth: torch.Tensor) -> dict:
    psnr, ssim = patch_similarity(decoded, truth[nearest_patches(decoded, truth)])
    return {"psnr": psnr, "ssim": ssim}


def leakage_space(det: str, args, clip: float) -> dict:
    """The decoder of one feature space and every upload of that space, audited."""
    base = ["num_clients=1", f"detector={det}", "exchange=summary", *args.overrides]
    pub = feature_config(compose(["dataset=textures", *base]))
    feats = load_client_data(pub, 0, 1).train.features
    grid = feats.shape[-1]
    rows = feature_rows(pub, feats)
    rows = rows.reshape(-1, rows.shape[-1])
    patches = position_patches(fitted_images(pub, None), grid).reshape(-1, 3, 16, 16)
    pick = sample(len(rows), 200_000, 0)
    decoder = train_decoder(rows[pick], patches[pick], steps=args.decoder_steps)
    public_test = pixels(pub, build_dataset(pub.dataset, "test"))
    public_patches = position_patches(public_test, grid).reshape(-1, 3, 16, 16)

    mtd = feature_config(compose([f"dataset.name={args.dataset}",
                                  f"dataset.root={Path(args.root).resolve()}",
                                  f"num_clients={SITES}", "partition.alpha=0.1",
                                  "partition.seed=0", *base[1:]]))
    private = compose([f"privacy.epsilon={args.leak_epsilon}", f"privacy.clip={clip}",
                       "privacy.seed=0"], base=mtd)
    results: dict[str, list] = {}
    best: dict[str, tuple] = {}

    def add(name: str, decoded: torch.Tensor, truth: torch.Tensor, paired: bool = False):
        got = (dict(zip(("psnr", "ssim"), patch_similarity(decoded, truth), strict=True))
               if paired else score(decoded, truth))
        results.setdefault(name, []).append(got)
        i = int(np.argmax(got["ssim"]))
        if name not in best or got["ssim"][i] > best[name][0]:
            near = truth[i] if paired else truth[nearest_patches(decoded[i:i + 1], truth)[0]]
            best[name] = (float(got["ssim"][i]), decoded[i], near)

    def uploaded(up: dict, site: int) -> torch.Tensor:
        key = BANK if BANK in up else "mean"
        r = torch.from_numpy(np.asarray(up[key], dtype=np.float32))
        return r[sample(len(r), QUERIES, site)]

    eps = f"{args.leak_epsilon:g}"
    what = {"padim": ("per-position means (site upload)",
                      f"per-position means, DP epsilon {eps} (site upload)"),
            "patchcore": ("coreset (site upload)",
                          f"DP-Lloyd centres, epsilon {eps} (site upload)")}[det]
    uploads, truths = [], []
    for site in range(SITES):
        data = load_client_data(mtd, site, SITES, site_indices(mtd, site, SITES))
        f = data.train.features
        own = feature_rows(mtd, f)
        own = own.reshape(-1, own.shape[-1])
        full = position_patches(fitted_images(mtd, site), grid).reshape(-1, 3, 16, 16)
        q = sample(len(own), QUERIES, site)
        add("site's own features (decoder ceiling)", decode(decoder, own[q]), full[q],
            paired=True)
        truth = full[sample(len(full), TRUTH, site)]
        truths.append(truth)
        shape = FeatureShape(*f.shape[1:])
        for name, cfg in zip(what, (mtd, private), strict=True):
            client = create(cfg, shape, seed=site)
            client.fit(f, None, 1)
            up = client.summarize(1)
            add(name, decode(decoder, uploaded(up, site)), truth)
            if cfg is mtd:
                uploads.append(up)
                if BANK in up:  # coreset rows are real rows: each one's own patch
                    rows_up = uploaded(up, site)
                    src = torch.cat([torch.cdist(rows_up[a:a + 256], own).argmin(dim=1)
                                     for a in range(0, len(rows_up), 256)])
                    add("coreset, against each row's own source patch",
                        decode(decoder, rows_up), full[src], paired=True)
        add("random public patches (baseline)",
            public_patches[sample(len(public_patches), QUERIES, site)], truth)
    if BANK in uploads[0]:  # banks: the K-means centres of the union, what every site gets
        server = create(compose(["patchcore.merge=kmeans"], base=mtd), shape)
        merged = server.merge([server.validate(u, f"site {i}") for i, u in enumerate(uploads)],
                              1)
        for site, truth in enumerate(truths):
            add("K-means centres of the union (global bank)",
                decode(decoder, uploaded(merged, site)), truth)
    table = {name: {"psnr_mean": float(np.mean(np.concatenate([g["psnr"] for g in got]))),
                    "ssim_mean": float(np.mean(np.concatenate([g["ssim"] for g in got]))),
                    "ssim_p95": float(np.quantile(np.concatenate([g["ssim"] for g in got]),
                                                  0.95)),
                    "ssim_max": best[name][0]}
             for name, got in results.items()}
    return {"table": table, "best": {k: (v[1], v[2]) for k, v in best.items()}}


def leakage(args, clips: dict) -> tuple[dict, dict]:
    out, pictures = {}, {}
    for det in DETECTORS:
        clip = clips.get(det) or public_clip(det, args.overrides)
        res = leakage_space(det, args, clip)
        out[det] = res["table"]
        pictures.update({f"{det}: {k}": v for k, v in res["best"].items()})
        print(json.dumps(out[det], indent=1), flush=True)
    return {"epsilon": args.leak_epsilon, "decoder_steps": args.decoder_steps,
            "queries_per_site": QUERIES, "truth_per_site": TRUTH, "spaces": out}, pictures


def leakage_markdown(leak: dict) -> list[str]:
    lines = ["## Leakage audit: uploads decoded back to pixels", "",
             "A decoder trained on the public textures only; each decoded patch (16 px) "
             "against the nearest of the site's true training patches. Means over "
             f"{leak['queries_per_site']} decoded rows per site and upload; SSIM p95 and max: "
             "the best-recovered patches.", "",
             "| feature space | what is decoded | PSNR dB | SSIM | SSIM p95 | SSIM max |",
             "|---|---|---|---|---|---|"]
    for space, table in leak["spaces"].items():
        for name, r in table.items():
            lines.append(f"| {space} | {name} | {r['psnr_mean']:.2f} | {r['ssim_mean']:.3f} | "
                         f"{r['ssim_p95']:.3f} | {r['ssim_max']:.3f} |")
    return lines


def plot_leakage(pictures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in pictures if "ceiling" not in k]
    fig, axes = plt.subplots(2, len(names), figsize=(1.6 * len(names), 3.6))
    for j, name in enumerate(names):
        for i, img in enumerate(pictures[name]):
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(name.replace(": ", ":\n").replace(" (", "\n("), fontsize=6)
    axes[0, 0].set_ylabel("decoded", fontsize=7)
    axes[1, 0].set_ylabel("nearest true", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def utility_markdown(u: dict) -> list[str]:
    lines = ["## Differential privacy on summaries: detection quality against epsilon", "",
             f"delta = {u['delta']:g} per site, one image the unit of privacy; clip bounds "
             "from the public textures: " + ", ".join(f"{d} {c:.4g}"
                                                     for d, c in u["clips"].items()) + ".",
             "", "| detector | epsilon | I-AUROC | P-AUROC | PRO | MB up / site |",
             "|---|---|---|---|---|---|"]
    for r in u["runs"]:
        eps = {0.0: "no noise (plain upload)", CLIP_ONLY: "1e9 (clipped, noise ~ 0)"}.get(
            r["epsilon"], f"{r['epsilon']:g}")
        lines.append(f"| {r['detector']} | {eps} | {fmt(r['i_auroc'])} | "
                     f"{fmt(r['p_auroc'])} | {fmt(r['pro'])} | "
                     f"{r['upload_bytes_per_client'] / 1e6:.2f} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = results.get("utility")
    if not u:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, metric in zip(axes, ("i_auroc", "p_auroc"), strict=True):
        for i, det in enumerate(DETECTORS):
            runs = [r for r in u["runs"] if r["detector"] == det and r[metric] is not None]
            noisy = sorted((r["epsilon"], r[metric]) for r in runs
                           if 0 < r["epsilon"] < CLIP_ONLY)
            plain = [r[metric] for r in runs if r["epsilon"] == 0]
            if noisy:
                ax.plot(*zip(*noisy, strict=True), "o-", color=f"C{i}", label=det)
            if plain:
                ax.axhline(plain[0], color=f"C{i}", ls="--", lw=1, label=f"{det}, no noise")
            clipped = [r[metric] for r in runs if r["epsilon"] == CLIP_ONLY]
            if clipped:
                ax.axhline(clipped[0], color=f"C{i}", ls=":", lw=1,
                           label=f"{det}, clipped, no noise")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (per site, delta 1e-5)")
        ax.set_title(metric.replace("_", "-").upper())
        ax.axhline(0.5, color="grey", lw=0.5)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--parts", nargs="+", default=["utility", "leakage"],
                        choices=["utility", "leakage"])
    parser.add_argument("--leak-epsilon", type=float, default=10.0)
    parser.add_argument("--decoder-steps", type=int, default=3000)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS),
                        choices=DETECTORS)
    parser.add_argument("--epsilons", type=float, nargs="+",
                        default=[0.0, *EPSILONS, CLIP_ONLY],
                        help="0: the plain upload; runs already in the results for other "
                             "detectors or epsilons are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "privacy.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    args.previous = results
    results.setdefault("commands", {})
    if "utility" in args.parts:
        results["utility"] = utility(args)
        results["commands"].setdefault("utility", []).append(command_line())
    if "leakage" in args.parts:
        results["leakage"], pictures = leakage(args, results.get("utility", {}).get("clips", {}))
        results["commands"]["leakage"] = [command_line()]  # the whole part, redone
        plot_leakage(pictures, args.out / "privacy_leakage.png")
    results["machine"] = machine()
    md = ["# What leaves a site", ""]
    if "utility" in results:
        plot(results, args.out / "privacy.png")
        md += utility_markdown(results["utility"]) + ["", "![utility](privacy.png)", ""]
        if "history" in results["utility"]:
            md[-2:-2] = [results["utility"]["history"], ""]
    if "leakage" in results:
        md += leakage_markdown(results["leakage"]) + [
            "", "![best-recovered patches](privacy_leakage.png)", ""]
    md += ["Commands (a utility run replaces the rows it runs and keeps the others):"]
    md += [f"- {k}: `{c}`" for k, cmds in results["commands"].items() for c in cmds]
    write_results(args.out, "privacy", results, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
