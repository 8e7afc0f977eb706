"""What a site writes after a run so it can score new images (``fedad-predict``): its
detector state, its calibration and, when it scored against one, its own summary; the run
writes the global summary. The layout, the calibration and reading them back:
:mod:`fedad.evaluation.saved_site`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fedad.detectors.base import Detector, Summary
from fedad.evaluation.saved_site import SUMMARY_FILE, Calibration, calibrate
from fedad.federation.checkpoint import atomic_write


def save_site(out: str | Path, site: int, detector: Detector,
              holdout_scores: np.ndarray | torch.Tensor | None, quantile: float,
              summary: Summary | None = None) -> Calibration:
    """Write ``<out>/site-<site>/state.pt`` and ``calibration.json`` (and ``summary.npz``
    when the site scores against its own ``summary``); return the calibration."""
    folder = Path(out) / f"site-{site}"
    folder.mkdir(parents=True, exist_ok=True)
    if summary is not None:
        save_summary(folder, summary)
    cal = calibrate(holdout_scores, quantile)
    atomic_write(folder / "state.pt", lambda p: torch.save(detector.state(), p))
    atomic_write(folder / "calibration.json",
                  lambda p: p.write_text(json.dumps(asdict(cal), indent=2) + "\n"))
    return cal


def save_summary(out: str | Path, summary: Summary) -> Path:
    """The global summary as ``<out>/global_summary.npz``."""
    path = Path(out) / SUMMARY_FILE
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".tmp"), "wb") as fh:
        np.savez(fh, **summary)
    os.replace(path.with_name(path.name + ".tmp"), path)
    return path
