"""``fedad-report <run or sweep folder>``: ``report.html`` (one self-contained page, see
:mod:`fedad.evaluation.html_report`) of a run folder, or of a ``fedad-sim -m`` sweep with
its table (Markdown, CSV, JSON) and figures (see :mod:`fedad.evaluation.sweep_report`).

    fedad-report outputs/2026-11-23/10-00-00/run-123      # writes <run>/report.html
    fedad-report multirun/2026-11-23/10-00-00              # writes <folder>/report/
    fedad-report multirun/2026-11-23/10-00-00 --out DIR

A folder with ``rounds.json`` (or a ``fedad-sim`` output folder holding one ``run-*``) is a
run; any other folder is read as a sweep.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fedad.errors import FedadError
from fedad.evaluation.html_report import write_report
from fedad.progress import setup_logging

log = logging.getLogger("fedad")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", metavar="folder",
                        help="a run folder, or a sweep folder (hydra.sweep.dir of fedad-sim -m)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: the run folder; <sweep>/report)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        kind, files = write_report(args.sweep, args.out)
    except FedadError as exc:
        log.error("fedad-report: %s", exc)
        return 2
    if kind == "sweep":
        print(files["md"].read_text())
    else:
        print(files["html"])
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
