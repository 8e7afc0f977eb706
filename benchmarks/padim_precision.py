"""How exact federated PaDiM is on real features: the global Gaussian of 5 clients against
the centralized one (all training images in one set), with float64 and float32 uploads.

    python benchmarks/padim_precision.py --root ../shared/data/mtd [--dataset mtd] [key=value ...]

In one process, no Flower, on the engine (:class:`~fedad.federation.in_process.InProcess`,
the same sites, uploads, checks and merge as a Flower run): each client's statistics
(count, mean, centred scatter) from its partition (Dirichlet alpha 0.1, partition seed 0,
the detectors benchmark's split); the centralized statistics from the union of the same
training images (each site's, read back from its data). Reported: the largest absolute
difference of the means and of the covariances, relative to the largest entry of the
centralized ones. Needs no masks (runs on
image-level-only data). Writes ``padim_precision.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, command_line, machine, write_results  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.components.gaussian import gaussian  # noqa: E402
from fedad.detectors.base import FeatureShape  # noqa: E402
from fedad.detectors.registry import create, feature_config, resolve  # noqa: E402
from fedad.federation.in_process import InProcess  # noqa: E402
from fedad.federation.server import Server  # noqa: E402
from fedad.federation.site_data import load_client_data  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402
from partitions import partition_nodes, site_indices  # noqa: E402


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    base = compose([f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
                    "detector=padim", "num_clients=5", "partition.alpha=0.1",
                    "partition.seed=0", "backbone.cache=disk",
                    "backbone.cache_dir=/tmp/fedad-featcache", *args.overrides])
    rows = {}
    central = None
    for dtype in ("float64", "float32"):
        cfg = resolve(compose([f"padim.upload_dtype={dtype}", "examples=0"], base=base))
        transport = InProcess(cfg, partition_nodes(cfg))
        server = Server(cfg, transport.keys)
        server.run(transport, {"test": False})  # one round: fit, upload, check, merge
        mean_f, cov_f = gaussian(server.exchange.global_summary(), cfg.padim.epsilon)
        sent = server.history[-1]["bytes"]["received_per_client"]
        n = cfg.num_clients
        data = [load_client_data(feature_config(cfg), i, n, site_indices(cfg, i, n))
                for i in range(n)]
        if central is None:
            shape = FeatureShape(*data[0].train.features.shape[1:])
            one = create(cfg, shape)
            one.fit(torch.cat([d.train.features for d in data]), None, 1)
            summary = one.summarize(1)
            central = gaussian(one.validate(summary, "centralized"), cfg.padim.epsilon)
        rows[dtype] = {"mean_rel": relative(mean_f, central[0]),
                       "cov_rel": relative(cov_f, central[1]),
                       "images": int(sum(len(d.train) for d in data)),
                       "upload_bytes": int(sent)}
    md = ["Federated PaDiM against centralized on the same training images "
          f"(`{args.dataset}`, {base.dataset.scored_size()} px, 5 clients, Dirichlet alpha 0.1): "
          "largest absolute difference relative to the largest centralized entry.", "",
          "| upload dtype | MB up / client (mean) | images | mean | covariance |",
          "|---|---|---|---|---|"]
    for dtype, r in rows.items():
        md.append(f"| {dtype} | {r['upload_bytes'] / 1e6:.2f} | {r['images']} | "
                  f"{r['mean_rel']:.2e} | {r['cov_rel']:.2e} |")
    md += ["", f"Command: `{command_line()}`"]
    write_results(args.out, "padim_precision", {"command": command_line(),
                                                "machine": machine(), "rows": rows},
                  "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
