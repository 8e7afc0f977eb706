"""The end of a ``fedad-sim -m`` sweep: one line per failed combination, a count, and a
non-zero exit when any failed (after every combination has run)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedad.evaluation.run_status import read_status, run_folders

log = logging.getLogger("fedad")


def sweep_outcome(sweep_dir: Path) -> tuple[list[Path], list[Path]]:
    """(completed, failed) run folders under ``sweep_dir``; a folder with no status (a
    killed run) counts as failed."""
    done, failed = [], []
    for job in run_folders(sweep_dir):
        status = read_status(job)
        (done if status and status["status"] == "completed" else failed).append(job)
    return done, failed


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        done, failed = sweep_outcome(sweep_dir)
        for job in failed:
            status = read_status(job) or {}
            log.error("failed: %s (%s): %s", job, " ".join(status.get("overrides", [])),
                      status.get("error") or "no status.json (killed?)")
        log.info("sweep %s: %d of %d runs completed; fedad-report %s", sweep_dir, len(done),
                 len(done) + len(failed), sweep_dir)
        if failed:
            sys.exit(1)
