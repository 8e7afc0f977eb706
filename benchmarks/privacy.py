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

``secure``: PaDiM federated through Flower's simulation runtime (5 sites, alpha 0.1) with
the plain upload, with SecAgg+ (``secure.enabled``), and with SecAgg+ while one site drops
out after sharing its keys: how far the global statistics are from the reference
(centralized; with the dropout, the plain statistics of the sites that stay), and what the
protocol costs in bytes and seconds of the train round (``--work``: where the runs go).

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
# the public textures at the sites' size (their own default is their 160-px crop); an
# image_size override given to the benchmark comes after and applies to both
PUBLIC = ("dataset=textures", "dataset.image_size=224")
FEDDYMEM = "feddymem"  # audited with the site's head known (leakage_feddymem)
EPSILONS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
CLIP_ONLY = 1e9  # an epsilon whose noise is negligible: what clipping alone costs
METRICS = ("i_auroc", "p_auroc", "pro")


def feature_rows(cfg, features: torch.Tensor) -> torch.Tensor:
    """The rows ``cfg``'s detector clips when it releases privately, ``(N, P, d)``."""
    return create(cfg, FeatureShape(*features.shape[1:])).private_rows(features)


def public_clip(detector: str, overrides: list[str]) -> float:
    """The median norm of ``detector``'s feature rows over the embedded texture photos'
    training images (one site holding all of them)."""
    cfg = feature_config(compose([*PUBLIC, f"detector={detector}",
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


def sites_config(args, overrides: list[str]):
    """The audited federation: ``SITES`` sites of ``--dataset`` (Dirichlet alpha 0.1)."""
    return feature_config(compose([f"dataset.name={args.dataset}",
                                   f"dataset.root={Path(args.root).resolve()}",
                                   f"num_clients={SITES}", "partition.alpha=0.1",
                                   "partition.seed=0", *overrides]))


def baseline_patches(pub, grid: int) -> torch.Tensor:
    """Every position's patch of the public textures' test photos (the baseline)."""
    return position_patches(pixels(pub, build_dataset(pub.dataset, "test")),
                            grid).reshape(-1, 3, 16, 16)


class Audit:
    """Decoded patches scored per upload kind: PSNR and SSIM against the nearest true patch
    (or, ``paired``, each against its own), and the best-recovered example of each kind."""

    def __init__(self) -> None:
        self.results: dict[str, list] = {}
        self.best: dict[str, tuple] = {}

    def add(self, name: str, decoded: torch.Tensor, truth: torch.Tensor,
            paired: bool = False) -> None:
        got = (dict(zip(("psnr", "ssim"), patch_similarity(decoded, truth), strict=True))
               if paired else score(decoded, truth))
        self.results.setdefault(name, []).append(got)
        i = int(np.argmax(got["ssim"]))
        if name not in self.best or got["ssim"][i] > self.best[name][0]:
            near = truth[i] if paired else truth[nearest_patches(decoded[i:i + 1], truth)[0]]
            self.best[name] = (float(got["ssim"][i]), decoded[i], near)

    def summary(self) -> dict:
        """``table``: means, SSIM p95 and max per kind; ``best``: (decoded, true) pairs."""
        def cat(got, k):
            return np.concatenate([g[k] for g in got])
        table = {name: {"psnr_mean": float(np.mean(cat(got, "psnr"))),
                        "ssim_mean": float(np.mean(cat(got, "ssim"))),
                        "ssim_p95": float(np.quantile(cat(got, "ssim"), 0.95)),
                        "ssim_max": self.best[name][0]}
                 for name, got in self.results.items()}
        return {"table": table, "best": {k: (v[1], v[2]) for k, v in self.best.items()}}


def leakage_space(det: str, args, clip: float) -> dict:
    """The decoder of one feature space and every upload of that space, audited."""
    base = ["num_clients=1", f"detector={det}", "exchange=summary", *args.overrides]
    pub = feature_config(compose([*PUBLIC, *base]))
    feats = load_client_data(pub, 0, 1).train.features
    grid = feats.shape[-1]
    rows = feature_rows(pub, feats)
    rows = rows.reshape(-1, rows.shape[-1])
    patches = position_patches(fitted_images(pub, None), grid).reshape(-1, 3, 16, 16)
    pick = sample(len(rows), 200_000, 0)
    decoder = train_decoder(rows[pick], patches[pick], steps=args.decoder_steps)
    public_patches = baseline_patches(pub, grid)

    mtd = sites_config(args, base[1:])
    private = compose([f"privacy.epsilon={args.leak_epsilon}", f"privacy.clip={clip}",
                       "privacy.seed=0"], base=mtd)
    audit = Audit()
    add = audit.add

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
    return audit.summary()


def _maps(det, features: torch.Tensor) -> torch.Tensor:
    """FedDyMem's memory features of ``features`` as rows ``(N, H*W, C)`` (row-major)."""
    maps = torch.cat(list(det.client.memories(features)))
    return maps.reshape(maps.shape[0], -1, maps.shape[-1])


def leakage_feddymem(args) -> dict:
    """FedDyMem's banks audited by the strongest server: one that also holds the site's
    trained head (the summary exchange never sends it; a weight exchange, or a leak, would).
    The sites federate rounds ``0..train.rounds`` on fedad's detectors and K-means merge
    (no evaluation); then, per site, a decoder is trained on the public textures' memory
    features *through that site's head* and applied to the site's last uploaded bank and to
    the global bank it received."""
    base = ["num_clients=1", "detector=feddymem", "exchange=summary", *args.overrides]
    pub = feature_config(compose([*PUBLIC, *base]))
    pub_feats = load_client_data(pub, 0, 1).train.features
    grid = pub_feats.shape[-1]
    pub_patches = position_patches(fitted_images(pub, None), grid).reshape(-1, 3, 16, 16)
    public_baseline = baseline_patches(pub, grid)
    mtd = sites_config(args, base[1:])
    sites = []
    for site in range(SITES):
        f = load_client_data(mtd, site, SITES, site_indices(mtd, site, SITES)).train.features
        sites.append((create(mtd, FeatureShape(*f.shape[1:]), seed=site), f))
    server = create(mtd, FeatureShape(*sites[0][1].shape[1:]))
    merged, uploads = None, []
    t0 = time.perf_counter()
    for rnd in range(0, mtd.train.rounds + 1):
        uploads = []
        for det, f in sites:
            det.fit(f, merged, rnd)
            uploads.append(det.summarize(rnd))
        merged = server.merge([server.validate(u, f"site {i}") for i, u in enumerate(uploads)],
                              rnd)
        print(f"feddymem round {rnd}/{mtd.train.rounds} ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    audit = Audit()
    add = audit.add

    for site, ((det, f), up) in enumerate(zip(sites, uploads, strict=True)):
        rows = _maps(det, pub_feats)
        channels = rows.shape[-1]
        rows = rows.reshape(-1, channels)
        pick = sample(len(rows), 200_000, site)
        decoder = train_decoder(rows[pick], pub_patches[pick], steps=args.decoder_steps)
        full = position_patches(fitted_images(mtd, site), grid).reshape(-1, 3, 16, 16)
        own = _maps(det, f).reshape(-1, channels)
        q = sample(len(own), QUERIES, site)
        add("site's own memory features (decoder ceiling)", decode(decoder, own[q]), full[q],
            paired=True)
        truth = full[sample(len(full), TRUTH, site)]
        for name, bank in (("memory bank (site upload)", up[BANK]),
                           ("K-means global bank (what every site receives)", merged[BANK])):
            r = torch.from_numpy(np.asarray(bank, dtype=np.float32)).reshape(-1, channels)
            add(name, decode(decoder, r[sample(len(r), QUERIES, site)]), truth)
        add("random public patches (baseline)",
            public_baseline[sample(len(public_baseline), QUERIES, site)], truth)
        print(f"feddymem site {site} audited ({time.perf_counter() - t0:.0f}s)", flush=True)
    return {**audit.summary(), "rounds": mtd.train.rounds}


def leakage(args, clips: dict) -> tuple[dict, dict]:
    old = (args.previous or {}).get("leakage", {})
    out, pictures = dict(old.get("spaces", {})), {}
    for det in args.spaces:
        if det == FEDDYMEM:
            res = leakage_feddymem(args)
            print(f"feddymem: the banks of round {res['rounds']}", flush=True)
        else:
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
             "the best-recovered patches. FedDyMem's banks live in each site's trained "
             "projection: their decoder is trained on the public textures *through that "
             "site's head*, a server that also holds the head (the summary exchange never "
             "sends it).", "",
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


# -- secure aggregation ----------------------------------------------------------------------
def _stats(path: Path) -> dict:
    """A PaDiM run's global statistics: count, mean and Eq. 1's covariance (float64)."""
    from fedad.components.gaussian import gaussian

    z = np.load(path)
    mean, cov = gaussian({k: z[k] for k in ("count", "mean", "scatter")}, 0.0)
    return {"count": int(z["count"][0]), "mean": mean, "covariance": cov}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|``."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


DROPS = 4  # the partition that drops out of SecAgg+ (fails in its masking stage)


def secure(args) -> dict:
    """PaDiM on MTD through Flower's simulation (5 sites): the plain upload, SecAgg+, and
    SecAgg+ with one site dropping out after sharing its keys; against the centralized
    statistics (one site, in one process) or those of the sites that stay."""
    from fedad.cli.overrides import compose
    from fedad.cli.sim import SimConfig, launch
    from fedad.federation.in_process import InProcess
    from fedad.federation.run import federate
    from partitions import partition_nodes

    root = Path(args.work)
    base = [f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
            "detector=padim", "exchange=summary", "num_clients=5", "partition.alpha=0.1",
            "partition.seed=0", "examples=0", *args.overrides]

    def in_process(overrides: list[str], folder: Path) -> dict:
        t = time.perf_counter()
        cfg = compose(overrides)
        transport = InProcess(cfg, partition_nodes(cfg))
        federate(cfg, transport, transport.keys, folder)
        print(f"{folder.name}: statistics in {time.perf_counter() - t:.0f}s", flush=True)
        return _stats(folder / "global_summary.npz")

    # the reference: every training image at one site; with a site dropping out, the plain
    # statistics of the sites that stay (in one process, the same fault)
    central = in_process([*base, "num_clients=1"], root / "centralized")
    stayed = in_process([*base, f"faults=[{DROPS}:raise]"], root / "plain-without-dropped")
    variants = {"plain": ([], central), "secagg+": (["secure.enabled=true"], central),
                f"secagg+, site {DROPS} drops out": (
                    ["secure.enabled=true", f"faults=[{DROPS}:raise]"], stayed)}
    rows = []
    for name, (extra, reference) in variants.items():
        folder = root / name.replace(" ", "_").replace(",", "").replace("+", "plus")
        t = time.perf_counter()
        code = launch(compose([*base, *extra, "client_cpus=2"], base=SimConfig()), folder)
        seconds = time.perf_counter() - t
        runs = sorted(folder.glob("run-*"))
        if code != 0 or not runs:
            rows.append({"variant": name, "failed": True, "seconds_run": seconds})
            continue
        result = json.loads((runs[-1] / "rounds.json").read_text())
        (rec,) = result["rounds"]
        got = _stats(runs[-1] / "global_summary.npz")
        row = {"variant": name, "sites": rec["train"]["clients"],
               "count": got["count"], "count_reference": reference["count"],
               "bytes_up_per_site": rec["bytes"]["received_per_client"],
               "bytes_down": rec["bytes"]["sent"],
               "seconds_train_round": rec["seconds"]["train_exchange"],
               "seconds_run": seconds,
               **{k: result["final"][k]["mean"] for k in METRICS if k in result["final"]}}
        if "secure" in rec["train"]:
            row["secure"] = rec["train"]["secure"]
        if got["count"] == reference["count"]:
            row |= {f"max_rel_diff_{k}": _relative(got[k], reference[k])
                    for k in ("mean", "covariance")}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "secure"}), flush=True)
    return {"rows": rows}


def secure_markdown(sec: dict) -> list[str]:
    lines = ["## Secure aggregation (SecAgg+) of PaDiM's statistics", "",
             "Through Flower's simulation runtime, 5 sites (alpha 0.1); the difference to the "
             "reference statistics as max |a - b| / max |b|: the centralized ones (one site "
             "holding every training image), and, when a site drops out after sharing its "
             "keys, the plain statistics of the sites that stay.",
             "", "| variant | sites summed | count / reference | mean rel. diff | "
             "covariance rel. diff | MB up / site | train round s | I-AUROC | P-AUROC | PRO |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sec["rows"]:
        if r.get("failed"):
            lines.append(f"| {r['variant']} | failed | | | | | | | | |")
            continue

        def rel(k: str, r=r) -> str:
            v = r.get(f"max_rel_diff_{k}")
            return "-" if v is None else f"{v:.1e}"
        lines.append(f"| {r['variant']} | {r['sites']} | {r['count']} / "
                     f"{r['count_reference']} | {rel('mean')} | {rel('covariance')} | "
                     f"{r['bytes_up_per_site'] / 1e6:.1f} | {r['seconds_train_round']:.1f} | "
                     f"{fmt(r.get('i_auroc'))} | {fmt(r.get('p_auroc'))} | "
                     f"{fmt(r.get('pro'))} |")
    return lines


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


def markdown(results: dict, out: Path) -> str:
    """``privacy.md`` from the results (its pictures are looked up in ``out``)."""
    md = ["# What leaves a site", ""]
    if "utility" in results:
        md += utility_markdown(results["utility"]) + ["", "![utility](privacy.png)", ""]
        if "history" in results["utility"]:
            md[-2:-2] = [results["utility"]["history"], ""]
    if "leakage" in results:
        md += leakage_markdown(results["leakage"]) + [
            "", "![best-recovered patches](privacy_leakage.png)", ""]
        md += [f"![best-recovered patches, {p.stem[len('privacy_leakage_'):]}]({p.name})"
               for p in sorted(out.glob("privacy_leakage_*.png"))] + [""]
    if "secure" in results:
        md += secure_markdown(results["secure"]) + [""]
    md += ["Commands (a utility run replaces the rows it runs and keeps the others):"]
    md += [f"- {k}: `{c}`" for k, cmds in results["commands"].items() for c in cmds]
    return "\n".join(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--parts", nargs="+", default=["utility", "leakage"],
                        choices=["utility", "leakage", "secure"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-privacy-secure"),
                        help="secure: where the runs are written")
    parser.add_argument("--leak-epsilon", type=float, default=10.0)
    parser.add_argument("--decoder-steps", type=int, default=3000)
    parser.add_argument("--spaces", nargs="+", default=[*DETECTORS, FEDDYMEM],
                        choices=[*DETECTORS, FEDDYMEM],
                        help="leakage: the feature spaces audited (the others' rows are kept)")
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
        every = set(args.spaces) == {*DETECTORS, FEDDYMEM}
        if every:  # the whole part, redone
            results["commands"]["leakage"] = [command_line()]
        else:
            results["commands"].setdefault("leakage", []).append(command_line())
        plot_leakage(pictures, args.out / ("privacy_leakage.png" if every else
                                           f"privacy_leakage_{'_'.join(args.spaces)}.png"))
    if "secure" in args.parts:
        results["secure"] = secure(args)
        results["commands"]["secure"] = [command_line()]
    results["machine"] = machine()
    if "utility" in results:
        plot(results, args.out / "privacy.png")
    write_results(args.out, "privacy", results, markdown(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
