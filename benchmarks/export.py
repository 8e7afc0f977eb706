"""A site's scorer exported to ONNX (``fedad-export``): latency per 224-px image in
onnxruntime and in PyTorch, model size, and how far onnxruntime's maps and scores are from
PyTorch's on the run's test images.

    python benchmarks/export.py [--detectors patchcore,padim,feddymem] [--repeats 30]
                                [--run DETECTOR=RUN_DIR ...] [--work DIR] [--out DIR]

Per detector: a run (``--run``, or a fresh ``fedad-sim method=<detector>
dataset.image_size=224 train.rounds=2`` on the embedded textures in ``--work``), site 0's
scorer exported (``--chunk`` bank rows per k-NN block), the dataset's test images written
as PNG files and scored by both (:func:`fedad.export.runtime.compare`: the reference is
``fedad-predict``'s path, faiss k-NN). Latency: batch 1, one 224-px image, warm (3 calls
first), the median of ``--repeats`` calls on ``--threads`` threads (onnxruntime intra-op,
torch's ``set_num_threads``), the four calls interleaved: onnxruntime, the exported module
in PyTorch traced (``torch.jit.trace``) and eager (torch k-NN), and fedad-predict's own
path (backbone + faiss). Writes ``export.{json,md}`` to
``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.components.knn import BANK_CHUNK, bank_chunk  # noqa: E402
from fedad.data.export import write_mvtec  # noqa: E402
from fedad.data.factory import build_dataset  # noqa: E402
from fedad.evaluation.saved_site import (
    load_run_config,  # noqa: E402
    load_summary,  # noqa: E402
)
from fedad.export.onnx_export import export_site, scorer_module  # noqa: E402
from fedad.export.runtime import compare, load_images, session  # noqa: E402
from fedad.federation.predict import site_scorer  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

SIZE = 224


def make_run(detector: str, work: Path) -> Path:
    """A fresh ``fedad-sim`` run of ``detector`` at 224 px in ``work/<detector>``."""
    folder = work / detector
    exe = Path(sys.executable).with_name("fedad-sim")
    cmd = [str(exe), f"method={detector}", f"dataset.image_size={SIZE}", "train.rounds=2",
           f"hydra.run.dir={folder}"]
    print("running:", " ".join(cmd[1:]), flush=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fedad-sim exited with {done.returncode}:\n"
                         + "\n".join((done.stdout + done.stderr).splitlines()[-20:]))
    runs = sorted(folder.glob("run-*"))
    if not runs:
        raise SystemExit(f"fedad-sim left no run-* folder in {folder}")
    print(f"run {runs[-1]} in {time.perf_counter() - t:.0f} s", flush=True)
    return runs[-1]


def test_images(run: Path, folder: Path) -> Path:
    """The run's test split written as PNG files under ``folder`` (flat)."""
    cfg = load_run_config(run)
    ds = build_dataset(cfg.dataset, "test")
    tree = folder / "tree"
    write_mvtec(ds.source, ds.records, "test", tree)
    flat = folder / "images"
    flat.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(sorted(tree.glob("*/test/*/*.png"))):
        (flat / f"{i:03d}-{p.parent.name}.png").write_bytes(p.read_bytes())
    return flat


def median_ms(calls: dict[str, Callable[[], object]], repeats: int, warm: int = 3
              ) -> dict[str, float]:
    """Median wall time in milliseconds of each of ``calls`` after ``warm`` calls each,
    the calls interleaved (one of each per repeat) so that a busy machine slows them
    alike."""
    for call in calls.values():
        for _ in range(warm):
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {k: 1000.0 * statistics.median(v) for k, v in times.items()}


def measure(detector: str, run: Path, work: Path, repeats: int, threads: int,
            chunk: int) -> dict:
    """Export site 0's scorer of ``run`` and measure it (see the module docstring)."""
    torch.set_num_threads(threads)
    scorer = site_scorer(run, 0, torch.device("cpu"))
    out = work / f"{detector}-export"
    t = time.perf_counter()
    result = export_site(run, 0, out / "scorer.onnx", chunk, scorer=scorer)
    export_s = time.perf_counter() - t
    images = test_images(run, out)
    check = compare(result.model, run, images, 0, scorer=scorer, threads=threads)
    x = load_images(sorted(images.glob("*.png"))[:1], scorer.cfg.dataset.scored_size())
    feed = {"images": x.numpy()}
    sess = session(result.model, threads)
    module = scorer_module(scorer)
    mean = torch.tensor(scorer.info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(scorer.info["std"]).view(1, 3, 1, 1)

    def faiss_path() -> None:  # fedad-predict's: normalise, backbone, faiss k-NN score
        scorer.detector.score(scorer.extractor((x - mean) / std), scorer.summary,
                              scorer.cfg.dataset.scored_size())

    with torch.no_grad(), bank_chunk(chunk), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's chatter
        traced = torch.jit.trace(module, (x,), check_trace=False)  # the graph, in torch
        ms = median_ms({"onnxruntime": lambda: sess.run(None, feed),
                        "traced": lambda: traced(x), "eager": lambda: module(x),
                        "faiss": faiss_path}, repeats)
    summary = load_summary(run, 0)
    return {"detector": detector, "run": str(run), "image_size": int(x.shape[-1]),
            "summary_arrays": {k: list(np.asarray(v).shape) for k, v in summary.items()},
            "model_mb": result.model.stat().st_size / 1e6, "export_seconds": export_s,
            "opset": result.meta["opset"], "threshold": result.meta["threshold"],
            "onnxruntime_ms": ms["onnxruntime"], "torch_traced_ms": ms["traced"],
            "torch_module_ms": ms["eager"], "torch_faiss_ms": ms["faiss"],
            "check": check.as_dict()}


def markdown(res: dict) -> str:
    rows = res["rows"]
    md = ["# fedad-export: a site's scorer in ONNX", "",
          f"Site 0's scorer of a `fedad-sim` run on the embedded textures at {SIZE} px, "
          f"exported with bank chunks of {res['chunk']} rows. Latency per image: batch 1, "
          f"warm, the median of {res['repeats']} calls on {res['threads']} threads "
          f"({res['machine']['cpu_count']} CPU cores). Check: onnxruntime against "
          "fedad-predict (PyTorch, faiss k-NN) on the run's test images.", "",
          "| detector | summary | onnxruntime ms | PyTorch, traced module ms | "
          "PyTorch, eager module ms | PyTorch + faiss (fedad-predict) ms | model MB | "
          "export s | images | max abs map diff | max abs score diff | score scale | "
          "decisions differ |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["check"]
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in
                           r["summary_arrays"].items())
        md.append(f"| {r['detector']} | {shapes} | {r['onnxruntime_ms']:.0f} | "
                  f"{r['torch_traced_ms']:.0f} | {r['torch_module_ms']:.0f} | "
                  f"{r['torch_faiss_ms']:.0f} | "
                  f"{r['model_mb']:.1f} | {r['export_seconds']:.1f} | {c['images']} | "
                  f"{c['max_map_diff']:.2g} | {c['max_score_diff']:.2g} | "
                  f"{c['score_scale']:.3g} | {c['decisions_differ']} |")
    md += ["", "Traced: the exported module traced by `torch.jit.trace` (the same ops as the "
           "graph, the summary as constants). Eager: the same module called as Python, and "
           "fedad-predict's path (backbone, then the detector's faiss `score`): both work "
           "per call on what the graph holds as constants (PaDiM's inverse covariances "
           "are cached, found by the summary arrays' identity: hashed once per round).",
           "",
           f"Command: `{res['command']}`", ""]
    return "\n".join(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="patchcore,padim,feddymem")
    parser.add_argument("--run", action="append", default=[], metavar="DETECTOR=RUN_DIR",
                        help="use this finished run for DETECTOR instead of making one")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-export-bench"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=BANK_CHUNK)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    setup_logging()
    given = dict(item.split("=", 1) for item in args.run)
    rows = []
    for det in [d for d in args.detectors.split(",") if d]:
        run = Path(given[det]) if det in given else make_run(det, args.work)
        rows.append(measure(det, run, args.work, args.repeats, args.threads, args.chunk))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "summary_arrays"}),
              flush=True)
    res = {"rows": rows, "chunk": args.chunk, "repeats": args.repeats,
           "threads": args.threads, "command": command_line(), "machine": machine()}
    write_results(args.out, "export", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
