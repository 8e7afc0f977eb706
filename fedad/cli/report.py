"""``fedad-report <sweep folder>``: one table (Markdown, CSV, JSON) and the figures of a
``fedad-sim -m`` sweep (see :mod:`fedad.evaluation.sweep_report`).

    fedad-report multirun/2026-11-23/10-00-00              # writes <folder>/report/
    fedad-report multirun/2026-11-23/10-00-00 --out DIR
"""

from __future__ import annotations

import argparse
import logging
import sys

from fedad.errors import FedadError
from fedad.evaluation.sweep_report import make_report
from fedad.progress import setup_logging

log = logging.getLogger("fedad")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep folder (hydra.sweep.dir of fedad-sim -m)")
    parser.add_argument("--out", default=None, help="output folder (default <sweep>/report)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        files = make_report(args.sweep, args.out)
    except FedadError as exc:
        log.error("fedad-report: %s", exc)
        return 2
    print(files["md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
