"""How a site's memory and time grow with its images, and a federation's with its sites
(issue 54 item 4).

    python benchmarks/scale.py --root ../shared/data/mtd [--sizes 1000 5000 20000]
        [--detectors padim patchcore] [--memory-sizes 1000 padim:5000] [--sites 5 20 50]
        [--work DIR] [--out DIR] [key=value ...]

**One site, many images.** MTD's 761 training images are not 20,000, so a site's training
set is MTD's training images replicated: copy 0 as they are, copy ``v >= 1`` flipped
(horizontally, vertically or both, by ``v``) and cropped to a seeded box of 75-95 % of each
side, then resized as every image is. Every cell runs in a child process of its own and
measures, stage by stage, the seconds and the peak resident memory (``VmHWM`` from
``/proc/self/status``, reset before each stage by writing 5 to ``/proc/self/clear_refs``):

* ``features``: the frozen backbone over the site's images (the disk feature cache under
  ``--work`` is filled on the first cell of a detector and read by the ones after it: the
  seconds of a cell that read it are not extraction seconds; the column says which);
* ``fit``: the detector's fit (PaDiM's statistics, PatchCore's coreset);
* ``merge``: the server's validation and merge of that one upload;
* ``score``: :data:`TEST_IMAGES` MTD test images (every ``n``-th) scored against it (features
  included), with their I-AUROC.

Two modes: ``stream`` (``backbone.stream=true``: features go to a file and the fit reads
them :data:`CHUNK` images at a time) and ``memory`` (today's one-shot path: every feature in
memory, one fit over all of them; run at ``--memory-sizes`` only, since it is what does not
scale: PatchCore's one greedy coreset over 5,000 images' patches would take about half an
hour, over 20,000 hours; PaDiM's 20,000 images' features alone are 9.5 GB).

**Many sites.** PaDiM, federated in one process (the engine's uploads, checks and exact
merge; ``_inprocess.run_in_process``) over MTD at 5, 20 and 50 sites (Dirichlet alpha 0.1,
``partition.min_samples=1``: at alpha 0.1 no draw gives each of 50 sites 2 images): wall
seconds, the process's peak memory (every site's features add up in it), MB per site, test
metrics.

Writes ``scale.{json,md}`` to ``--out`` (default ``benchmarks/results/``) with the fit of
peak memory against images (a power law over the streamed sizes, by least squares on the
logs). Finished cells in ``--work`` are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

log = logging.getLogger("fedad")
DETECTORS = ("padim", "patchcore")
SIZES = (1000, 5000, 20000)
MEMORY_SIZES = ("1000", "padim:5000")
SITES = (5, 20, 50)
TEST_IMAGES = 200
CHUNK = 256  # backbone.stream_chunk (the default)
TARGET_MB = 4096  # issue 54: a site's peak at 20k training images
SITE_STAGES = ("features", "fit", "score")  # a site's; "merge" is the server's


# -- one site ---------------------------------------------------------------------------------
class Replicated:
    """An :class:`~fedad.data.dataset.ImageSource` over ``base``'s records: the path
    ``<path>#<v>`` is copy ``v`` (module docstring)."""

    def __init__(self, base) -> None:
        self.base = base

    @staticmethod
    def split(record):
        path, _, v = record.path.rpartition("#")
        return replace(record, path=path), int(v)

    def load_image(self, record):
        import numpy as np

        record, v = self.split(record)
        image = self.base.load_image(record)
        if v == 0:
            return image
        if v % 4 in (1, 3):
            image = image[:, ::-1]
        if v % 4 in (2, 3):
            image = image[::-1]
        rng = np.random.default_rng(v)
        h, w = image.shape[:2]
        ch, cw = (max(8, int(s * rng.uniform(0.75, 0.95))) for s in (h, w))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return np.ascontiguousarray(image[top:top + ch, left:left + cw])

    def load_mask(self, record, image_hw):
        return None


def replicated(train, size: int):
    """``size`` images: ``train``'s, copy after copy (the last copy cut short)."""
    from fedad.data.dataset import AnomalyDataset

    records = [replace(r, path=f"{r.path}#{i // len(train)}",
                       key=f"{r.key}#{i // len(train)}")
               for i, r in ((i, train.records[i % len(train)]) for i in range(size))]
    return AnomalyDataset(records, Replicated(train.source), train.image_size,
                          has_masks=False)


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def site_cell(detector: str, mode: str, size: int, work: Path, overrides: list[str],
              out: Path) -> None:
    """One (detector, mode, size) in this (child) process; its row goes to ``out``."""
    import torch

    from fedad.cli.overrides import compose
    from fedad.data.factory import build_dataset
    from fedad.detectors.base import FeatureShape
    from fedad.detectors.registry import create, feature_config, resolve
    from fedad.evaluation.metrics import evaluate
    from fedad.features.cache import dataset_features
    from fedad.federation.site_data import extractor_for
    from fedad.progress import setup_logging

    setup_logging()
    cfg = compose([f"detector={detector}", f"backbone.cache_dir={work / 'cache'}",
                   "backbone.cache=disk", f"backbone.stream={str(mode == 'stream').lower()}",
                   f"backbone.stream_chunk={CHUNK}", *overrides])
    cfg = feature_config(resolve(cfg))
    row: dict = {"detector": detector, "mode": mode, "images": size, "overrides": overrides,
                 "stages": {}}
    baseline = peak_mb()  # Python, torch and the imports
    row["imports_mb"] = baseline

    def stage(name: str, fn):
        reset_peak()
        t = time.perf_counter()
        result = fn()
        row["stages"][name] = {"seconds": time.perf_counter() - t, "peak_mb": peak_mb()}
        log.info("%s %s %d images: %s %.1f s, peak %.0f MB", detector, mode, size, name,
                 row["stages"][name]["seconds"], row["stages"][name]["peak_mb"])
        return result

    extractor, info = extractor_for(cfg)
    train = replicated(build_dataset(cfg.dataset, "train"), size)
    # the copies are a prefix of the next size's: an earlier cell's cached images are these
    row["cached_images"] = min(size, len(list((work / "cache").rglob("*.pt"))))

    def fit_site():
        feats = dataset_features(cfg, extractor, info, train, torch.device("cpu"),
                                 f"{size} training images", stream=mode == "stream")
        return feats, create(cfg, FeatureShape(*feats.features.shape[1:]), "cpu", seed=0)

    feats, site = stage("features", fit_site)
    row["features_mb"] = feats.nbytes / 1e6
    shape = site.shape
    if mode == "stream":
        stage("fit", lambda: site.fit_stream(feats.features, None, 1))
    else:
        stage("fit", lambda: site.fit(feats.features, None, 1))
    upload = site.summarize(1)
    row["upload_mb"] = sum(v.nbytes for v in upload.values()) / 1e6
    feats = site = None  # what a site keeps after its upload: nothing
    server = create(cfg, shape, "cpu", seed=0)
    summary = stage("merge", lambda: server.merge([server.validate(upload, "site 0")], 1))
    upload = None
    test = build_dataset(cfg.dataset, "test")
    step = max(1, len(test) // TEST_IMAGES)  # spread over the set: both classes
    test = test.subset(list(range(0, len(test), step))[:TEST_IMAGES])

    def score():
        f = dataset_features(replace(cfg, backbone=replace(cfg.backbone, cache="none")),
                             extractor, info, test, torch.device("cpu"), "test features")
        s = server.score(f.features, summary, cfg.dataset.scored_size())
        return evaluate(s.image, f.labels, None, None)["i_auroc"]

    row["i_auroc"] = stage("score", score)
    row["test_images"] = len(test)
    row["peak_mb"] = site_peak(row)
    out.write_text(json.dumps(row, indent=1))


def site_peak(row: dict) -> float:
    """The site's peak: its stages (features, fit, score), not the server's merge."""
    return max(row["stages"][s]["peak_mb"] for s in SITE_STAGES)


# -- many sites -------------------------------------------------------------------------------
def sites_cell(sites: int, stream: bool, overrides: list[str], out: Path) -> None:
    from _inprocess import run_in_process

    from fedad.cli.overrides import compose
    from fedad.progress import setup_logging

    setup_logging()
    cfg = compose(["detector=padim", f"num_clients={sites}", "partition.alpha=0.1",
                   "partition.seed=0", "partition.min_samples=1",
                   f"backbone.stream={str(stream).lower()}", *overrides])
    t0 = time.perf_counter()
    r = run_in_process(cfg, also_last=False)
    row = {"sites": sites, "stream": stream, "overrides": overrides,
           **{k: v for k, v in r["test"].items() if k in ("i_auroc", "p_auroc", "pro")},
           "upload_mb": r["upload_bytes_per_client"] / 1e6,
           "seconds": {k: float(v) for k, v in r["seconds"].items()},
           "wall": time.perf_counter() - t0,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out.write_text(json.dumps(row, indent=1))


# -- driver -----------------------------------------------------------------------------------
def run_child(path: Path, args: list[str]) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, *args, "--cell-out", str(path)]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path.stem}: the cell failed (exit {done.returncode}); rerun: "
                           f"{' '.join(cmd)}")
    return json.loads(path.read_text())


def memory_sizes(entries: list[str], detector: str) -> list[int]:
    """``--memory-sizes``: ``N`` (every detector) or ``detector:N``."""
    out = []
    for e in entries:
        det, _, n = e.rpartition(":")
        if det in ("", detector):
            out.append(int(n))
    return out


def power_fit(rows: list[dict]) -> dict | None:
    """``peak_mb ~ a * images^b`` by least squares on the logs (two sizes or more)."""
    pts = [(r["images"], site_peak(r)) for r in rows]
    if len(pts) < 2:
        return None
    xs, ys = [math.log(x) for x, _ in pts], [math.log(y) for _, y in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return {"exponent": b, "scale_mb": math.exp(my - b * mx)}


def markdown(payload: dict) -> str:
    lines = [f"Scale on `{payload['dataset']}` (2 CPU cores, no GPU). One site: MTD's training "
             "images replicated with flips and crops (benchmarks/scale.py's docstring) to "
             "the sizes below; peak MB is the process's peak resident memory within each "
             "stage (VmHWM, reset per stage), imports included; `merge` is the server's "
             "stage (one site's upload reduced to the global summary), the others the "
             "site's. `stream`: "
             f"backbone.stream=true, chunks of {CHUNK} images; `memory`: every feature in "
             f"memory, one fit. Scoring: {TEST_IMAGES} MTD test images (every n-th).", "",
             "| detector | mode | images | features s | fit s | merge s | score s | "
             "features peak MB | fit peak MB | merge peak MB | score peak MB | features MB "
             "(all) | upload MB | I-AUROC (200) |", "|---" * 14 + "|"]
    for r in payload["site"]:
        st = r["stages"]
        src = f" ({r['cached_images']:,} cached)" if r.get("cached_images") else ""
        lines.append(
            f"| {r['detector']} | {r['mode']} | {r['images']:,} | "
            f"{st['features']['seconds']:.0f}{src} | {st['fit']['seconds']:.1f} | "
            f"{st['merge']['seconds']:.1f} | {st['score']['seconds']:.1f} | "
            + " | ".join(f"{st[s]['peak_mb']:.0f}" for s in ("features", "fit", "merge",
                                                              "score"))
            + f" | {r['features_mb']:.0f} | {r['upload_mb']:.1f} | {r['i_auroc']:.4f} |")
    lines += ["", "A site's peak memory (features, fit, score) against its images (streamed; "
              "least squares on the logs):", ""]
    for det, fit in payload["fits"].items():
        if fit:
            lines.append(f"- {det}: peak MB ~ {fit['scale_mb']:.0f} x images^"
                         f"{fit['exponent']:.3f}" + (" (sub-linear)" if fit["exponent"] < 1
                                                     else " (not sub-linear)"))
    for det, verdict in payload["target"].items():
        lines.append(f"- {det}: {verdict}")
    if payload["sites"]:
        lines += ["", "Many sites: PaDiM federated in one process over MTD (Dirichlet alpha "
                  "0.1, partition.min_samples=1); peak MB is the whole process's (every "
                  "site's features).", "",
                  "| sites | stream | wall s | peak MB | MB up / site | I-AUROC | P-AUROC | "
                  "PRO |", "|---" * 8 + "|"]
        for r in payload["sites"]:
            lines.append(f"| {r['sites']} | {'yes' if r['stream'] else 'no'} | "
                         f"{r['wall']:.0f} | {r['peak_mb']:.0f} | {r['upload_mb']:.1f} | "
                         f"{r.get('i_auroc', float('nan')):.4f} | "
                         f"{r.get('p_auroc', float('nan')):.4f} | "
                         f"{r.get('pro', float('nan')):.4f} |")
    for note in payload.get("notes", []):
        lines += ["", note]
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="dataset root")
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--memory-sizes", nargs="*", default=list(MEMORY_SIZES),
                        help="sizes run in memory too: N (every detector) or detector:N")
    parser.add_argument("--sites", type=int, nargs="*", default=list(SITES))
    parser.add_argument("--stream-sites", type=int, nargs="*", default=[max(SITES)],
                        help="site counts also run with backbone.stream=true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-scale"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--site-cell", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sites-cell", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides for every cell")
    args = parser.parse_intermixed_args()
    if args.site_cell:
        det, mode, size = args.site_cell
        site_cell(det, mode, int(size), args.work / det, args.overrides, args.cell_out)
        return 0
    if args.sites_cell:
        sites_cell(int(args.sites_cell[0]), args.sites_cell[1] == "stream", args.overrides,
                   args.cell_out)
        return 0
    if not args.root:
        parser.error("--root is required")
    base = [f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
            *args.overrides]
    site_rows, fits, target = [], {}, {}
    for det in args.detectors:
        streamed = []
        for size in sorted(args.sizes):
            streamed.append(run_child(args.work / det / f"stream-{size}.json",
                                      ["--site-cell", det, "stream", str(size),
                                       "--work", str(args.work), *base]))
        memory = [run_child(args.work / det / f"memory-{size}.json",
                            ["--site-cell", det, "memory", str(size), "--work",
                             str(args.work), *base])
              for size in sorted(memory_sizes(args.memory_sizes, det))]
        site_rows += streamed + memory
        fits[det] = power_fit(streamed)
        top = max(streamed, key=lambda r: r["images"], default=None)
        if top is not None:
            verdict = ("met" if site_peak(top) < TARGET_MB else "missed") if (
                top["images"] >= max(SIZES)) else "not measured at 20,000"
            target[det] = (f"site peak {site_peak(top):.0f} MB at {top['images']:,} images "
                           f"(target: under {TARGET_MB} MB at 20,000): {verdict}")
    site_runs = []
    for n in args.sites:
        site_runs.append(run_child(args.work / "sites" / f"{n}.json",
                                   ["--sites-cell", str(n), "memory", *base]))
    for n in args.stream_sites:
        site_runs.append(run_child(args.work / "sites" / f"{n}-stream.json",
                                   ["--sites-cell", str(n), "stream", *base]))
    payload = {"command": command_line(), "machine": machine(), "dataset": args.dataset,
               "site": site_rows, "fits": fits, "target": target, "sites": site_runs,
               "notes": args.note}
    write_results(args.out, "scale", payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
