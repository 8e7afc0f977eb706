"""What a finished run left a site to score new images with (``fedad-predict``), read
back: its detector state and its anomaly threshold, calibrated on its held-out normal
training images only (never on test images). The run directory adds the global summary and
the config. The engine writes these files (:mod:`fedad.federation.site_files`).

    <run dir>/config.json           the resolved run config
    <run dir>/global_summary.npz    what the server sent back last
    <run dir>/site-<id>/state.pt    the site's detector state (e.g. FedDyMem's head)
    <run dir>/site-<id>/calibration.json  threshold, quantile, held-out scores
    <run dir>/site-<id>/summary.npz the site's own summary, when it scored against one
                                    (weight exchanges: FedDyMem's local bank)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedad.config.flat import from_dict
from fedad.config.schema import RunConfig
from fedad.detectors.base import Summary
from fedad.detectors.registry import feature_config
from fedad.errors import ConfigError

SUMMARY_FILE = "global_summary.npz"


@dataclass
class Calibration:
    """A site's threshold: the ``quantile`` of its held-out normal image scores (``None``
    when it held out no image)."""

    threshold: float | None
    quantile: float
    holdout_images: int
    holdout_scores: list[float] = field(default_factory=list)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run saved (``config.json``).

    Raises:
        ConfigError: the file is missing, naming it.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing (is {run_dir} a fedad run directory?)")
    return feature_config(from_dict(json.loads(path.read_text())))


def calibrate(scores: np.ndarray | torch.Tensor | None, quantile: float) -> Calibration:
    """Threshold = the ``quantile`` of held-out normal scores (numpy's ``higher`` method, a
    real score): at most ``1 - quantile`` of those images score above it.

    Raises:
        ConfigError: ``quantile`` outside ``(0, 1]``.
    """
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"calibration.quantile must be in (0, 1], got {quantile}")
    if scores is None or len(scores) == 0:
        return Calibration(None, quantile, 0)
    s = np.asarray(torch.as_tensor(scores).double().cpu().numpy(), dtype=np.float64)
    return Calibration(float(np.quantile(s, quantile, method="higher")), quantile, int(s.size),
                       [float(v) for v in s])


def load_summary(run_dir: str | Path, site: int | None = None) -> Summary:
    """The summary site ``site`` scores against: its own (``site-<id>/``) when it kept one,
    else the global summary the run left behind.

    Raises:
        ConfigError: neither file exists, naming them.
    """
    path = Path(run_dir) / SUMMARY_FILE
    if site is not None and (Path(run_dir) / f"site-{site}" / SUMMARY_FILE).is_file():
        path = Path(run_dir) / f"site-{site}" / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no global summary and site-{site} kept none (is "
                          f"{run_dir} a finished run directory?)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_site(run_dir: str | Path, site: int) -> tuple[dict[str, torch.Tensor], Calibration]:
    """A site's detector state and calibration.

    Raises:
        ConfigError: the site folder or a file in it is missing, naming it and the sites
            that exist.
    """
    folder = Path(run_dir) / f"site-{site}"
    if not folder.is_dir():
        have = sorted(p.name for p in Path(run_dir).glob("site-*"))
        raise ConfigError(f"{folder}: no such site in the run (sites: {', '.join(have) or 'none'})")
    for name in ("state.pt", "calibration.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: missing")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    cal = Calibration(**json.loads((folder / "calibration.json").read_text()))
    return state, cal
