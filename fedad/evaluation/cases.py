"""What a site keeps of its final test scores for the run's report
(:mod:`fedad.evaluation.html_report`): every test image's score and label, and a few cases
in full (image, ground truth, anomaly map), in one file per site:

    <run dir>/site-<id>/scores.npz

The cases are the highest-scored normal image (the worst false alarm), the lowest-scored
defective image (the worst miss) and the highest-scored defective image (the best
detection). Images are kept as 8-bit RGB at the input size, maps as float16 (display only:
the metrics were computed on the raw scores before). The pixel threshold a report draws
thresholded masks with is chosen without test labels: the calibration quantile of the
largest map value of each held-out normal training image (``None`` when none was held out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedad.config.schema import RunConfig
from fedad.data.factory import build_dataset
from fedad.detectors.base import Scores
from fedad.features.cache import FeatureSet

SCORES_FILE = "scores.npz"
# (name, label, which end): the cases a report draws
CASES = (("highest-scored normal image", 0, "max"),
         ("lowest-scored defective image", 1, "min"),
         ("highest-scored defective image", 1, "max"))


@dataclass
class Case:
    """One test image drawn in full: its index in the test set, path, label and score,
    the image ``(S, S, 3)`` uint8, its ground truth ``(S, S)`` (``None``: no masks) and its
    anomaly map ``(S, S)``."""

    name: str
    index: int
    path: str
    label: int
    score: float
    image: np.ndarray
    mask: np.ndarray | None
    amap: np.ndarray


@dataclass
class SiteScores:
    """A site's final test scores: per image ``scores``, ``labels``, ``paths`` and
    ``product_types``; its image threshold and pixel threshold (``None``: not calibrated)
    and the cases."""

    site: int
    scores: np.ndarray
    labels: np.ndarray
    paths: list[str]
    product_types: list[str]
    image_threshold: float | None
    pixel_threshold: float | None
    has_masks: bool
    cases: list[Case]


def pick_cases(scores: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
    """``(name, index)`` of each case of :data:`CASES` the test set has (a set without
    defective images has only the first)."""
    out = []
    for name, label, end in CASES:
        idx = np.flatnonzero(labels == label)
        if idx.size:
            pick = np.argmax if end == "max" else np.argmin
            out.append((name, int(idx[pick(scores[idx])])))
    return out


def pixel_threshold(holdout_maps: torch.Tensor | np.ndarray | None,
                    quantile: float) -> float | None:
    """The ``quantile`` (numpy's ``higher``) of the held-out normal images' largest map
    values: at most ``1 - quantile`` of them have a pixel above it."""
    if holdout_maps is None or len(holdout_maps) == 0:
        return None
    peaks = np.asarray(torch.as_tensor(holdout_maps).float().reshape(len(holdout_maps), -1)
                       .amax(1).numpy(), dtype=np.float64)
    return float(np.quantile(peaks, quantile, method="higher"))


def _rgb8(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """A normalised ``(3, S, S)`` image as ``(S, S, 3)`` uint8."""
    img = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255).round().astype(np.uint8)


def save_scores(out: str | Path, site: int, cfg: RunConfig, test: FeatureSet, scores: Scores,
                image_threshold: float | None, holdout_maps: torch.Tensor | None) -> Path:
    """Write ``<out>/site-<site>/scores.npz`` (``cfg``: the site's config, whose test
    dataset ``test`` was built from; the cases' images are read from it)."""
    values = torch.as_tensor(scores.image).double().cpu().numpy()
    labels = torch.as_tensor(test.labels).cpu().numpy().astype(np.int8)
    size = cfg.dataset.scored_size()
    cases = pick_cases(values, labels)
    pixel = pixel_threshold(holdout_maps, cfg.calibration.quantile)
    dataset = build_dataset(cfg.dataset, "test")
    where = {r.path: i for i, r in enumerate(dataset.records)}
    cases = [(name, i) for name, i in cases if test.paths[i] in where]
    images = [_rgb8(dataset[where[test.paths[i]]].image, dataset.mean, dataset.std)
              for _, i in cases]
    arrays = {
        "scores": values, "labels": labels,
        "paths": np.asarray(test.paths, dtype=str),
        "product_types": np.asarray(test.product_types, dtype=str),
        "image_threshold": np.float64(np.nan if image_threshold is None else image_threshold),
        "pixel_threshold": np.float64(np.nan if pixel is None else pixel),
        "case_names": np.asarray([n for n, _ in cases], dtype=str),
        "case_index": np.asarray([i for _, i in cases], dtype=np.int64),
        "case_images": np.asarray(images, dtype=np.uint8).reshape(len(cases), size, size, 3),
        "case_maps": np.stack([scores.maps[i].reshape(size, size).float().cpu().numpy()
                               for _, i in cases]).astype(np.float16) if cases
        else np.zeros((0, size, size), np.float16),
    }
    if test.masks is not None:
        arrays["case_masks"] = np.stack([test.masks[i].reshape(size, size).cpu().numpy()
                                         for _, i in cases]).astype(np.uint8) if cases \
            else np.zeros((0, size, size), np.uint8)
    folder = Path(out) / f"site-{site}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCORES_FILE
    with open(path.with_name(path.name + ".tmp"), "wb") as fh:
        np.savez_compressed(fh, **arrays)
    path.with_name(path.name + ".tmp").replace(path)
    return path


def _optional(value: np.ndarray) -> float | None:
    v = float(value)
    return None if np.isnan(v) else v


def load_scores(run_dir: str | Path) -> list[SiteScores]:
    """Every site's ``scores.npz`` in ``run_dir``, by site number (none: an empty list,
    e.g. a deployment whose sites kept their files on their own hosts)."""
    out = []
    for path in Path(run_dir).glob(f"site-*/{SCORES_FILE}"):
        site = int(path.parent.name.split("-", 1)[1])
        with np.load(path) as z:
            paths = [str(p) for p in z["paths"]]
            masks = z["case_masks"] if "case_masks" in z.files else None
            scores, labels = z["scores"].astype(np.float64), z["labels"].astype(int)
            cases = [Case(str(name), int(i), paths[int(i)], int(labels[int(i)]),
                          float(scores[int(i)]), z["case_images"][k],
                          None if masks is None else masks[k],
                          z["case_maps"][k].astype(np.float32))
                     for k, (name, i) in enumerate(zip(z["case_names"], z["case_index"],
                                                       strict=True))]
            out.append(SiteScores(site, scores, labels, paths,
                                  [str(p) for p in z["product_types"]],
                                  _optional(z["image_threshold"]),
                                  _optional(z["pixel_threshold"]), masks is not None, cases))
    return sorted(out, key=lambda s: s.site)
