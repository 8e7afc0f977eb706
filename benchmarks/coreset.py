"""Greedy coreset speed on real features: PatchCore's Alg. 1 on the MTD training set.

    python benchmarks/coreset.py --root ../shared/data/mtd [--ratio 0.1] \
        [--cache-dir /tmp/fedad-featcache] [--check-steps 500] [--out DIR] [key=value ...]

Builds the training features with the repo's own pipeline (backbone levels at strides 8 and
16, 3x3 locally aware averaging, fused; cached on disk so a second run skips the backbone),
flattens them to patches and times :func:`fedad.components.coreset.greedy_coreset` at
``--ratio``. Also: the textbook loop (one distance update of every row per pick) for the
first ``--check-steps`` picks, to check they agree and to extrapolate its time; the covering
radius (original space, exact) of the coreset, of its first row and of a random subset of
the same size. Writes ``coreset.json`` and ``coreset.md`` to ``--out`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.components.coreset import (  # noqa: E402
    covering_radius,
    default_start,
    greedy_coreset,
    project,
)
from fedad.config.schema import RunConfig  # noqa: E402
from fedad.data.factory import build_dataset  # noqa: E402
from fedad.device import resolve_device  # noqa: E402
from fedad.features.cache import dataset_features  # noqa: E402
from fedad.features.extractor import (
    build_feature_extractor,  # noqa: E402
    layers_for_strides,  # noqa: E402
)
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")


def train_patches(cfg: RunConfig) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Training patches ``(N*H*W, C)`` and the feature shape ``(N, C, H, W)``."""
    extractor, info = build_feature_extractor(cfg.backbone)
    train = dataset_features(cfg, extractor, info, build_dataset(cfg.dataset, "train"),
                             resolve_device(cfg.device), "train features")
    feats = train.features.float()
    shape = tuple(feats.shape)
    return feats.permute(0, 2, 3, 1).reshape(-1, shape[1]).contiguous(), shape


def naive_check(patches: torch.Tensor, chosen: torch.Tensor, steps: int, projection_dim: int,
                seed: int) -> dict:
    """The textbook greedy loop (every row's distance updated after each pick, float32) for
    ``steps`` picks: seconds per pick, and how many leading picks equal ``chosen``; at a
    difference, the relative gap of the two candidates' float64 distances (a near-tie)."""
    y = project(patches, projection_dim, seed)
    y -= y.mean(0, dtype=np.float64).astype(np.float32)
    norms = np.einsum("ij,ij->i", y, y)
    d = np.full(y.shape[0], np.inf, np.float32)
    picks = [default_start(patches)]
    t = time.perf_counter()
    for _ in range(steps - 1):
        c = y[picks[-1]]
        np.minimum(d, np.maximum(norms - 2.0 * (y @ c) + norms[picks[-1]], 0.0), out=d)
        d[picks[-1]] = -1.0
        picks.append(int(np.argmax(d)))
    per_pick = (time.perf_counter() - t) / max(steps - 1, 1)
    ours = chosen[:steps].numpy()
    same = np.asarray(picks) == ours
    agree = int(steps if same.all() else np.argmin(same))
    out = {"steps": steps, "agree": agree, "naive_seconds_per_pick": per_pick}
    if agree < steps:
        y64 = y.astype(np.float64)
        prev = y64[ours[:agree]]
        gaps = [float(((prev - y64[r]) ** 2).sum(1).min()) for r in (picks[agree], ours[agree])]
        out["first_difference_relative_gap"] = abs(gaps[0] - gaps[1]) / max(gaps)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (MTD raw layout)")
    parser.add_argument("--dataset", default="mtd", help="dataset.name (default mtd)")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset fraction of patches")
    parser.add_argument("--cache-dir", default="/tmp/fedad-featcache",
                        help="feature disk cache (reused across runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-steps", type=int, default=500,
                        help="picks of the textbook loop to compare and time (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides")
    args = parser.parse_args()
    setup_logging()
    cfg = compose([f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
                   "backbone.cache=disk", f"backbone.cache_dir={args.cache_dir}",
                   *args.overrides])
    cfg.backbone.layers = layers_for_strides(cfg.backbone.name, cfg.patchcore.strides)

    t = time.perf_counter()
    patches, shape = train_patches(cfg)
    feature_seconds = time.perf_counter() - t
    rows, dims = patches.shape
    size = max(1, min(rows, math.ceil(round(args.ratio * rows, 6))))
    proj = cfg.patchcore.projection_dim

    t = time.perf_counter()
    idx = greedy_coreset(patches, size, projection_dim=proj, seed=args.seed)
    coreset_seconds = time.perf_counter() - t
    log.info("greedy coreset: %d of %d rows in %.1fs", size, rows, coreset_seconds)
    check = (naive_check(patches, idx, min(args.check_steps, size), proj, args.seed)
             if args.check_steps > 0 else {})
    t = time.perf_counter()
    radius = covering_radius(patches, idx)
    radius_seconds = time.perf_counter() - t
    one = covering_radius(patches, idx[:1])
    g = torch.Generator().manual_seed(args.seed)
    rand = covering_radius(patches, torch.randperm(rows, generator=g)[:size])

    naive_total = check.get("naive_seconds_per_pick", float("nan")) * size
    result = {
        "dataset": args.dataset, "train_images": shape[0], "feature_shape": list(shape[1:]),
        "backbone": cfg.backbone.name, "layers": list(cfg.backbone.layers),
        "strides": list(cfg.patchcore.strides), "rows": rows, "dims": dims,
        "ratio": args.ratio, "coreset_size": size, "projection_dim": proj, "seed": args.seed,
        "coreset_seconds": coreset_seconds, "naive_check": check,
        "naive_seconds_extrapolated": naive_total, "feature_seconds": feature_seconds,
        "covering_radius": radius, "covering_radius_seconds": radius_seconds,
        "covering_radius_first_row": one, "covering_radius_random_subset": rand,
    }
    agree = (f"the first {check['agree']} of {check['steps']} picks equal the textbook "
             f"loop's" + ("" if check["agree"] == check["steps"] else
                          f" (then a near-tie: relative gap "
                          f"{check['first_difference_relative_gap']:.1e})")
             if check else "not checked against the textbook loop")
    lines = [
        f"Greedy coreset (PatchCore Alg. 1, exact, lazy) on `{args.dataset}` training "
        f"features: {shape[0]} images x {shape[2]}x{shape[3]} patches, backbone "
        f"{cfg.backbone.name} levels {list(cfg.backbone.layers)} (strides "
        f"{list(cfg.patchcore.strides)}), selected in a random projection to {proj} dims.", "",
        "| rows | dims | ratio | coreset rows | seconds | textbook loop, extrapolated s "
        "| covering radius | 1 row | random subset |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {rows} | {dims} | {args.ratio:g} | {size} | {coreset_seconds:.1f} "
        f"| {naive_total:.0f} | {radius:.3f} | {one:.3f} | {rand:.3f} |", "",
        f"Exactness: {agree}. Textbook loop: "
        f"{1e3 * check.get('naive_seconds_per_pick', float('nan')):.1f} ms per pick (one "
        f"distance update of every row) x {size} picks.",
        f"Covering radius: max over all rows of the distance to the nearest selected row, in "
        f"the original {dims}-dim space (exact, {radius_seconds:.0f}s); '1 row': the first "
        f"pick alone; 'random subset': {size} random rows.",
        f"Features: {feature_seconds:.0f}s (disk cache `{args.cache_dir}`). Machine: "
        f"{machine()['cpu_count']} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads.", "",
        f"Command: `{command_line()}`",
    ]
    payload = {"command": command_line(), "machine": machine(), "result": result}
    write_results(args.out, "coreset", payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
