"""``fedad-predict``: a site scores new images with what a finished run left it.

    fedad-predict outputs/2026-11-23/10-00-00/run-123 /srv/new-images --site 0
    fedad-predict RUN_DIR FOLDER --out predictions/ --no-heatmaps --skip-bad
    fedad-predict DIFFAD_RUN FOLDER --reconstruct --padim-run PADIM_RUN

Writes ``scores.csv`` (path, score, threshold, anomalous, error), ``predictions.json`` and
``heatmaps/*.png`` to ``--out`` (default ``<run dir>/predict-site<id>``). The threshold is
the site's own, calibrated on its held-out normal training images
(``calibration.quantile``, default 0.99: about 1% false alarms on normal images).
``--reconstruct`` (a diffad run) adds ``reconstructed/*.png``, the anomaly-free image of
each input by gradient denoising on the PaDiM statistics of ``--padim-run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedad.device import resolve_device
from fedad.errors import FedadError
from fedad.federation.predict import (
    check_reconstruction,
    predict,
    reconstruct_predictions,
    refine_predictions,
    site_scorer,
    write_predictions,
)
from fedad.progress import setup_logging
from fedad.refinements.registry import NONE, REFINEMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run: <output>/run-<id>")
    parser.add_argument("folder", type=Path, help="folder whose images are scored")
    parser.add_argument("--site", type=int, default=0, help="which site's state (default 0)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-heatmaps", action="store_true")
    parser.add_argument("--skip-bad", action="store_true",
                        help="score the readable images and list the unreadable ones (on "
                        "the console and, with their errors, in scores.csv and "
                        "predictions.json)")
    parser.add_argument("--refine", default=None, metavar="NAME",
                        help="pixel-level refinement: "
                        f"{', '.join((NONE, *REFINEMENTS))} or one a plug-in of the run "
                        "registers (default: the run's refine setting); it writes "
                        "refined/<image>-mask.png and -normal.png")
    parser.add_argument("--reconstruct", action="store_true",
                        help="a diffad run: also write reconstructed/<image>.png, the "
                        "anomaly-free image (gradient denoising, about a minute per "
                        "224-px image on 2 CPU cores)")
    parser.add_argument("--padim-run", type=Path, default=None,
                        help="with --reconstruct: a finished PaDiM run whose statistics "
                        "the reconstruction descends on (same backbone and image size)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.site < 0:
        parser.error(f"--site must be a site's id, 0 or more (got {args.site})")
    setup_logging(not args.quiet)
    try:
        scorer = site_scorer(args.run_dir, args.site, resolve_device(args.device))
        if args.reconstruct:  # refused before any image is scored
            check_reconstruction(scorer, args.padim_run)
        preds, maps, dataset, skipped = predict(args.run_dir, args.folder, args.site,
                                                args.device, args.skip_bad, scorer=scorer)
        refined = refine_predictions(args.run_dir, dataset, maps, args.site, args.device,
                                     scorer=scorer, how=args.refine)
        recon = reconstruct_predictions(scorer, dataset, args.padim_run, args.device) \
            if args.reconstruct else None
        out = write_predictions(preds, maps, dataset,
                                args.out or args.run_dir / f"predict-site{args.site}",
                                heatmaps=not args.no_heatmaps, refined=refined,
                                reconstructed=recon, skipped=skipped)
    except FedadError as exc:
        print(f"fedad-predict: error: {exc}", file=sys.stderr)
        return 2
    flagged = sum(bool(p.anomalous) for p in preds)
    thr = preds[0].threshold if preds else None
    print(f"{len(preds)} images scored; "
          + (f"{flagged} above the site's threshold {thr:.4g}" if thr is not None else
             "no threshold (the site held out no normal images: calibration.holdout=0)"))
    if skipped:
        print(f"{len(skipped)} unreadable image(s) skipped (listed with their error in "
              "scores.csv and predictions.json):")
        for b in skipped:
            print(f"  {b.error}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
