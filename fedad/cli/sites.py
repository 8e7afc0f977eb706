"""``fedad-sites``: split a dataset into one MVTec-layout folder per site, to try a
multi-host deployment (docker-compose, or ``tests/test_deployment.py``) without real sites.

    fedad-sites --out sites                         # embedded textures, 3 sites, alpha 0.1
    fedad-sites --out sites --num-sites 5 dataset.name=mtd dataset.root=/abs/mtd

Site ``i`` gets partition ``i`` of the training set (the same partitioner and
``partition.*`` settings as a simulation) and the test images of the product types it holds,
as ``<out>/site-<i>/<type>/{train,test,ground_truth}``. A SuperNode then reads it with
``--node-config 'data-root="<out>/site-<i>"'`` and the run config ``dataset.name=mvtec``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedad.cli.overrides import compose
from fedad.data.export import write_mvtec
from fedad.data.factory import build_dataset
from fedad.errors import FedadError
from fedad.progress import setup_logging


def make_sites(overrides: list[str], out: Path, num_sites: int) -> list[Path]:
    """Write the site folders; returns their paths.

    Raises:
        FedadError: bad overrides, data errors, or an impossible split (names the fix).
    """
    from partitions import counts_table, partition_indices

    cfg = compose(overrides)
    train = build_dataset(cfg.dataset, "train")
    test = build_dataset(cfg.dataset, "test")
    parts = partition_indices(train.product_types, num_sites, cfg.partition)
    print(f"Training images per site ({cfg.partition.method}, alpha {cfg.partition.alpha}, "
          f"seed {cfg.partition.seed}):")
    print(counts_table(train.product_types, parts))
    roots = []
    for i, idx in enumerate(parts):
        root = out / f"site-{i}"
        if root.exists() and any(root.iterdir()):
            raise FedadError(f"{root} exists and is not empty; choose another --out")
        records = [train.records[j] for j in idx]
        types = {r.product_type for r in records}
        tests = [r for r in test.records if r.product_type in types]
        n = write_mvtec(train.source, records, "train", root)
        m = write_mvtec(test.source, tests, "test", root)
        print(f"{root}: {n} training, {m} test images ({', '.join(sorted(types))})")
        roots.append(root)
    return roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-sites", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sites"), help="default: ./sites")
    parser.add_argument("--num-sites", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides (dataset.*, "
                                                     "partition.*)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        make_sites(args.overrides, args.out, args.num_sites)
    except FedadError as exc:
        print(f"fedad-sites: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
