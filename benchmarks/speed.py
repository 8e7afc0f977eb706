"""Where a federated FedDyMem run's time goes, next to the floor this machine cannot beat.

    python benchmarks/speed.py --root ../shared/data/mtd [--work DIR] [key=value ...]

1. The cache is warmed first (every client's frozen features written to
   ``backbone.cache_dir``, default ``<work>/features``), then one Flower run is timed with
   :mod:`federated`'s set-up (5 clients, alpha 0.1, 10 rounds x E=1, evaluation after rounds
   5 and 10, one client at a time with both cores): seconds per stage from the clients'
   own timings, the rest of the wall time is Flower/Ray overhead.
2. The floor, measured here on the same data: one backbone pass over every image the run
   reads (seconds per image of a batch-16 pass x the number of images); the head's
   training, memory-reduce and scoring FLOPs (``torch.utils.flop_counter`` on real batches:
   forward + backward where the run trains) plus the exact k-NN's ``2 * queries * bank *
   C`` FLOPs, over the GEMM rate measured here at the k-NN's shape; one faiss K-means of
   the clients' banks, timed. It is a floor, not an estimate: every conv and GEMM at the
   best measured rate, nothing else counted. It is measured before and after the run and
   the lower of the two kept (the host's speed drifts).

Writes ``speed.json`` and ``speed.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from federated import breakdown  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.cli.processes import exit_on_sigterm  # noqa: E402
from fedad.cli.sim import SimConfig, launch, run_config_of  # noqa: E402
from fedad.detectors.feddymem.aggregate import kmeans_aggregate  # noqa: E402
from fedad.detectors.feddymem.client import FedDyMemClient  # noqa: E402
from fedad.detectors.registry import evaluated, feature_config  # noqa: E402
from fedad.federation.site_data import extractor_for, load_client_data  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402
from partitions import site_indices  # noqa: E402

TARGET_SECONDS = 400.0


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def gemm_rate(queries: int, bank: int, channels: int, repeats: int = 5) -> float:
    """FLOP/s of ``(queries x C) @ (C x bank)`` in float32, best of ``repeats``."""
    a, b = torch.randn(queries, channels), torch.randn(channels, bank)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * queries * bank * channels / best


def floor(sim: SimConfig) -> dict:
    """The floor's parts in seconds, and what they are made of."""
    cfg = feature_config(run_config_of(sim))
    n = cfg.num_clients
    # also warms the disk cache
    data = [load_client_data(cfg, i, n, site_indices(cfg, i, n)) for i in range(n)]
    train = [d.train.features for d in data]
    n_train = sum(len(t) for t in train)
    n_other = sum(len(d.holdout) + len(d.validation) for d in data
                  if d.holdout is not None and d.validation is not None)
    test = data[0].test.features
    images = n_train + n_other + len(test)
    # one backbone pass: seconds per image of a batch of 16, without the cache
    extractor, _ = extractor_for(cfg)
    batch = torch.randn(16, 3, cfg.dataset.scored_size(), cfg.dataset.scored_size())
    with torch.no_grad():
        extractor(batch[:2])  # warm-up
        t = time.perf_counter()
        extractor(batch)
        per_image = (time.perf_counter() - t) / 16
    c, h, w = train[0].shape[1:]
    client = FedDyMemClient(c, cfg.head, cfg.train, seed=0, memory=cfg.feddymem)
    bank = client.initial_bank(train[0][:8])
    bs = cfg.train.batch_size
    x = train[0][:bs]
    train_flops = flops(lambda: client.train_epochs(x, bank, epochs=1)) / len(x)
    reduce_flops = flops(lambda: list(client.memories(x))) / len(x)
    score_flops = flops(lambda: client.score(test[:bs], bank, cfg.dataset.scored_size(),
                                             cfg.score)) / bs
    bank_rows = h * w
    knn = 2.0 * h * w * bank_rows * c  # one image's queries against the bank
    rate = gemm_rate(h * w * bs, bank_rows, c)
    rounds, epochs = cfg.train.rounds, cfg.train.local_epochs
    evaluations = sum(evaluated(r, rounds, sim.eval_every) for r in range(1, rounds + 1))
    banks = [client.initial_bank(t[:8]) for t in train]
    t = time.perf_counter()
    kmeans_aggregate(banks, seed=0, niter=cfg.train.kmeans_iters, init=cfg.feddymem.kmeans_init)
    kmeans_once = time.perf_counter() - t
    parts = {
        "backbone_pass": per_image * images,
        "head_training": rounds * epochs * n_train * (train_flops + knn) / rate,
        "memory_reduce": (rounds + 1) * n_train * reduce_flops / rate,
        "kmeans": (rounds + 1) * kmeans_once,
        "scoring": evaluations * n * len(test) * (score_flops + knn) / rate,
    }
    parts["floor"] = sum(parts.values())
    made_of = {"images_read": images, "train_images": n_train, "test_images": len(test),
               "backbone_seconds_per_image": per_image, "gemm_gflops": rate / 1e9,
               "train_gflop_per_image": train_flops / 1e9, "knn_gflop_per_image": knn / 1e9,
               "reduce_gflop_per_image": reduce_flops / 1e9,
               "score_gflop_per_image": score_flops / 1e9, "evaluations": evaluations,
               "kmeans_seconds_once": kmeans_once, "feature_shape": [c, h, w]}
    return {"seconds": parts, "made_of": made_of}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (MTD raw layout)")
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides")
    args = parser.parse_args()
    setup_logging()
    exit_on_sigterm()
    work = args.work or Path(tempfile.mkdtemp(prefix="fedad-speed-"))
    sim = compose([f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
                   "num_clients=5", "partition.alpha=0.1", "train.local_epochs=1",
                   "train.rounds=10", "eval_every=5", "client_cpus=2", "backbone.cache=disk",
                   f"backbone.cache_dir={work / 'features'}", *args.overrides],
                  base=SimConfig())
    low = floor(sim)  # warms the cache the run reads
    t0 = time.perf_counter()
    if launch(sim, work / "run") != 0:
        print(f"the run failed; see {work / 'run'}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    # the host's speed drifts (a shared VM: 92-213 GFLOP/s across sessions): probe again
    # after the run and keep the faster machine state, as a floor should
    probes = [low, floor(sim)]
    low = min(probes, key=lambda f: f["seconds"]["floor"])
    (run,) = list((work / "run").glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    stages = breakdown(result["rounds"], wall)
    overhead = stages["framework_overhead"] / wall
    lines = [
        f"FedDyMem on `{args.dataset}` through Flower: {sim.num_clients} clients, "
        f"alpha {sim.partition.alpha}, {sim.train.rounds} rounds x E={sim.train.local_epochs}, "
        f"{sim.dataset.scored_size()} px, {sim.backbone.name}, evaluation every "
        f"{sim.eval_every} rounds, feature cache warm. I-AUROC "
        f"{result['final']['i_auroc']['mean']:.4f}.", "",
        "| stage | measured s | share | floor s |", "|---|---|---|---|",
    ]
    pairs = {"feature_extraction": "backbone_pass", "local_training": "head_training",
             "kmeans": "kmeans", "evaluation": "scoring"}
    for stage, secs in stages.items():
        fl = low["seconds"].get(pairs.get(stage, ""), None)
        if stage == "local_training":
            fl = low["seconds"]["head_training"] + low["seconds"]["memory_reduce"]
        if stage == "wall":
            fl = low["seconds"]["floor"]
        lines.append(f"| {stage} | {secs:.1f} | {secs / wall:.1%} | "
                     f"{'' if fl is None else f'{fl:.1f}'} |")
    m = low["made_of"]
    lines += ["", "The run reads cached features (feature_extraction = cache reads); the floor "
              "counts one backbone pass over every image, what a cold cache costs once.",
              "", f"Target: wall <= {TARGET_SECONDS:.0f} s: "
              f"{'met' if wall <= TARGET_SECONDS else f'MISSED by {wall - TARGET_SECONDS:.0f} s'}"
              f"; Flower/Ray overhead {overhead:.1%} (target <= 10%: "
              f"{'met' if overhead <= 0.10 else 'MISSED'}).", "",
              f"Floor: {m['images_read']} images x {m['backbone_seconds_per_image']:.3f} s "
              f"backbone; per training image {m['train_gflop_per_image']:.2f} GFLOP head "
              f"(forward + backward) + {m['knn_gflop_per_image']:.2f} GFLOP k-NN, "
              f"{m['reduce_gflop_per_image']:.2f} GFLOP memory-reduce; per test image "
              f"{m['score_gflop_per_image']:.2f} + {m['knn_gflop_per_image']:.2f} GFLOP, x "
              f"{sim.num_clients} clients x {m['evaluations']} evaluations; at "
              f"{m['gemm_gflops']:.0f} GFLOP/s (float32 GEMM at the k-NN's shape, here; "
              "the faster of two probes, before and after the run: floor "
              f"{probes[0]['seconds']['floor']:.0f} s and {probes[1]['seconds']['floor']:.0f} s)"
              ".", "",
              f"Command: `{command_line()}`"]
    write_results(args.out, "speed", {"command": command_line(), "machine": machine(),
                                      "config": asdict(sim), "wall": wall, "stages": stages,
                                      "floor": low, "floor_probes": probes,
                                      "overhead_share": overhead,
                                      "target_seconds": TARGET_SECONDS,
                                      "i_auroc": result["final"]["i_auroc"]["mean"]},
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
