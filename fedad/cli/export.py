"""``fedad-export``: a site's scorer as an ONNX model for an inspection line.

    fedad-export outputs/2026-11-23/10-00-00/run-123 --site 0 --out scorer.onnx
    fedad-export RUN_DIR --site 0 --out scorer.onnx --chunk 4096 --check-images FOLDER

Writes ``--out`` (default ``<run dir>/export-site<id>/scorer.onnx``) and its sidecar
``scorer.json`` (input size, mean/std, threshold, detector, opset, fedad version). The model
takes ``images`` ``(N, 3, S, S)`` float32 RGB in ``[0, 1]`` (normalisation is inside) and
returns ``map`` ``(N, S, S)``, ``score`` ``(N,)`` and ``decision`` ``(N,)`` (``score >
threshold``; always false when the site has no threshold). ``--chunk`` bounds the k-NN's
distance blocks to ``(queries, chunk)``. ``--check-images`` scores a folder with
onnxruntime and with PyTorch and prints the largest differences. Needs
``pip install -e ".[export]"``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedad.components.knn import BANK_CHUNK
from fedad.errors import FedadError
from fedad.progress import setup_logging

log = logging.getLogger("fedad")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run: <output>/run-<id>")
    parser.add_argument("--site", type=int, default=0, help="which site's scorer (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the ONNX file (default <run dir>/export-site<id>/scorer.onnx); "
                        "the sidecar is written next to it with suffix .json")
    parser.add_argument("--chunk", type=int, default=BANK_CHUNK,
                        help=f"bank rows per k-NN distance block (default {BANK_CHUNK})")
    parser.add_argument("--check-images", type=Path, default=None, metavar="FOLDER",
                        help="score FOLDER with onnxruntime and with PyTorch and print the "
                        "largest differences of map and score")
    parser.add_argument("--skip-bad", action="store_true",
                        help="with --check-images: compare on the readable images and list "
                        "the unreadable ones")
    parser.add_argument("--dynamo", action="store_true",
                        help="use the torch.export-based exporter (opset 18, slower) in "
                        "place of the TorchScript one")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.site < 0:
        parser.error(f"--site must be a site's id, 0 or more (got {args.site})")
    setup_logging(not args.quiet)
    out = args.out or args.run_dir / f"export-site{args.site}" / "scorer.onnx"
    try:
        import torch

        from fedad.export.onnx_export import export_site, require_package
        from fedad.federation.predict import site_scorer

        if not args.run_dir.is_dir():
            raise FedadError(f"{args.run_dir}: no such run folder")
        require_package("onnx", "fedad-export")
        if args.check_images is not None:
            require_package("onnxruntime", "--check-images")
            from fedad.federation.predict import readable_images

            readable_images(args.check_images, args.skip_bad)  # refused before the export
        scorer = site_scorer(args.run_dir, args.site, torch.device("cpu"))
        result = export_site(args.run_dir, args.site, out, args.chunk, args.dynamo,
                             scorer=scorer)
        check = None
        if args.check_images is not None:
            from fedad.export.runtime import compare

            check = compare(result.model, args.run_dir, args.check_images, args.site,
                            scorer=scorer, skip_bad=args.skip_bad)
    except FedadError as exc:
        print(f"fedad-export: error: {exc}", file=sys.stderr)
        return 2
    meta = result.meta
    thr = meta["threshold"]
    print(f"{meta['detector']} scorer of site {args.site}: {result.model} "
          f"({result.model.stat().st_size / 1e6:.1f} MB, opset {meta['opset']}); "
          f"sidecar {result.sidecar}")
    print(f"input images (N, 3, {meta['image_size']}, {meta['image_size']}) float32 in [0, 1]; "
          + (f"decision = score > {thr:.6g}" if thr is not None else
             "no threshold: decision is always false"))
    if check is not None:
        print(f"check on {check.images} images of {args.check_images}: max |map diff| "
              f"{check.max_map_diff:.3g}, max |score diff| {check.max_score_diff:.3g} "
              f"(scores up to {check.score_scale:.4g}), {check.decisions_differ} "
              f"decisions differ ({check.decisions_at_threshold} of them scored at the "
              "threshold, within that difference)")
        if check.skipped:
            print(f"{len(check.skipped)} unreadable image(s) skipped:")
            for b in check.skipped:
                print(f"  {b.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
