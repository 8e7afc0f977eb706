"""Score new images at a site after a run: the run's global summary, the site's own
detector state and its threshold (calibrated on held-out normal training images, see
:mod:`fedad.evaluation.saved_site`). No Flower and no test labels: a site's inspection step."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedad.config.schema import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.data.io import FileSource, list_images, read_image, require_dir
from fedad.data.sample import SampleRecord
from fedad.detectors.base import FeatureShape
from fedad.detectors.capabilities import Differentiable, Reconstructs, describe
from fedad.detectors.registry import (
    client_seed,
    create,
    detector_class,
    load_plugins,
)
from fedad.device import resolve_device
from fedad.errors import ConfigError, DataError
from fedad.evaluation.differentiable import RefinedSet
from fedad.evaluation.saved_site import load_run_config, load_site, load_summary
from fedad.evaluation.scores import score
from fedad.features.cache import extract_features
from fedad.features.extractor import build_feature_extractor, extractor_signature
from fedad.refinements.base import SiteInputs
from fedad.refinements.registry import NONE, refinement_class

log = logging.getLogger("fedad")


@dataclass
class Prediction:
    """One image: its score, the site's threshold and the decision ``score > threshold``."""

    path: str
    score: float
    threshold: float | None
    anomalous: bool | None


@dataclass
class Skipped:
    """An image ``--skip-bad`` left out: its path and why it could not be read."""

    path: str
    error: str


def readable_images(folder: str | Path, skip_bad: bool = False,
                    flag: str = "--skip-bad") -> tuple[list[Path], list[Skipped]]:
    """The image files under ``folder`` (sorted) that can be read, and the ones that cannot
    with their errors.

    Raises:
        DataError: no image in the folder, or (unless ``skip_bad``) unreadable files, all
            of them named, with the command's ``flag`` that would skip them.
    """
    files = list_images(require_dir(folder, "image folder"))
    if not files:
        raise DataError(f"{folder}: no image files (png, jpg, bmp, tif)")
    good, bad = [], []
    for f in files:
        try:
            read_image(f)
            good.append(f)
        except DataError as exc:
            bad.append(Skipped(str(f), str(exc)))
    if bad and not skip_bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {folder} ({flag} to score the "
                        "rest):\n  " + "\n  ".join(b.error for b in bad))
    return good, bad


@dataclass
class SiteScorer:
    """What a site scores with after a run: the config, its detector with its state, the
    global (or its own) summary and the frozen backbone."""

    cfg: RunConfig
    detector: object
    summary: dict
    extractor: object
    info: dict
    threshold: float | None


def site_scorer(run_dir: str | Path, site: int, dev: torch.device) -> SiteScorer:
    cfg = load_run_config(run_dir)
    summary = load_summary(run_dir, site)
    state, cal = load_site(run_dir, site)
    extractor, info = build_feature_extractor(cfg.backbone)
    shape = FeatureShape(*extractor.output_shape(cfg.dataset.scored_size()))
    detector = create(cfg, shape, dev, seed=client_seed(cfg, site))
    detector.load_state(state)
    return SiteScorer(cfg, detector, summary, extractor, info, cal.threshold)


def predict(run_dir: str | Path, folder: str | Path, site: int = 0,
            device: str = "auto", skip_bad: bool = False, scorer: SiteScorer | None = None
            ) -> tuple[list[Prediction], torch.Tensor, AnomalyDataset, list[Skipped]]:
    """Scores, decisions and anomaly maps ``(N, S, S)`` of every image in ``folder``
    (``scorer``: the site's, when the caller already built it), and the images
    ``skip_bad`` left out with their errors."""
    files, skipped = readable_images(folder, skip_bad)
    dev = resolve_device(device)
    s = scorer or site_scorer(run_dir, site, dev)
    cfg, info = s.cfg, s.info
    records = [SampleRecord(path=str(f), label=0, product_type="site") for f in files]
    dataset = AnomalyDataset(records, FileSource(), cfg.dataset.scored_size(),
                             info["mean"], info["std"], has_masks=False)
    feats = extract_features(s.extractor, dataset, extractor_signature(
                             info, s.extractor.state_dict()), dev,
                             batch_size=cfg.train.batch_size, cache="none", desc="features")
    scores = score(s.detector, feats.features, s.summary, cfg.dataset.scored_size())
    out = []
    for path, v in zip(feats.paths, scores.image.tolist(), strict=True):
        flag = None if s.threshold is None else bool(v > s.threshold)
        out.append(Prediction(path, float(v), s.threshold, flag))
    return out, scores.maps, dataset, skipped


def refine_predictions(run_dir: str | Path, dataset: AnomalyDataset, maps: torch.Tensor,
                       site: int = 0, device: str = "auto", scorer: SiteScorer | None = None,
                       how: str | None = None) -> RefinedSet | None:
    """The refinement ``how`` (default: the run's ``refine``; :mod:`fedad.refinements.registry`) of
    ``maps`` of ``dataset``'s images, with what the run left in the site's folder; ``None``
    for ``refine=none``.

    Raises:
        ConfigError: an unknown refinement, or the site's folder lacks what it needs (the
            run did not use it).
    """
    s = scorer or site_scorer(run_dir, site, resolve_device(device))
    name = how or s.cfg.refine
    if name == NONE:
        return None
    images = torch.stack([dataset[i].image for i in range(len(dataset))])
    inputs = SiteInputs(s.cfg, s.detector, s.summary, s.extractor, s.info, dataset, dataset,
                        None, None, site)
    load_plugins(s.cfg)  # a plug-in refinement registers itself on import
    return refinement_class(name).on_new_images(Path(run_dir) / f"site-{site}", inputs,
                                                images, maps,
                                                [r.path for r in dataset.records])


def check_reconstruction(scorer: SiteScorer, base_run: str | Path | None) -> RunConfig:
    """The config of ``base_run`` when ``scorer``'s run can reconstruct with it.

    Raises:
        ConfigError: the run's detector reconstructs nothing, ``base_run`` is missing, its
            image size or backbone differ, or its detector has no differentiable score,
            naming what is wrong.
    """
    if not isinstance(scorer.detector, Reconstructs):
        raise ConfigError(f"--reconstruct needs a run whose detector declares "
                          f"{describe(Reconstructs)} (diffad); this run's detector is "
                          f"{scorer.cfg.detector}, which reconstructs nothing")
    if base_run is None:
        raise ConfigError("--reconstruct needs --padim-run RUN_DIR: the statistics (a PaDiM "
                          "run's, or any run whose detector scores with gradients) the "
                          "reconstruction descends on")
    pcfg = load_run_config(base_run)
    for what, a, b in (("dataset.image_size", pcfg.dataset.scored_size(),
                        scorer.cfg.dataset.scored_size()),
                       ("backbone.name", pcfg.backbone.name, scorer.cfg.backbone.name)):
        if a != b:
            raise ConfigError(f"{base_run}: {what}={a!r}, but the reconstructing run's is "
                              f"{b!r}")
    if not issubclass(detector_class(pcfg.detector), Differentiable):
        raise ConfigError(f"{base_run}: detector={pcfg.detector} has no differentiable "
                          f"score to descend on (it does not declare "
                          f"{describe(Differentiable)})")
    return pcfg


def reconstruct_predictions(scorer: SiteScorer, dataset: AnomalyDataset,
                            base_run: str | Path | None, device: str = "auto"
                            ) -> torch.Tensor:
    """The anomaly-free reconstructions ``(N, 3, S, S)`` of ``dataset``'s images (in its
    normalisation) by the site's detector (diffad: gradient denoising, Algorithm 1),
    descending on the score of ``base_run``'s detector and summary (a finished PaDiM run
    on the same backbone and image size: the authors' choice).

    Raises:
        ConfigError: as :func:`check_reconstruction`.
    """
    from fedad.evaluation.objectives import detector_objective

    pcfg = check_reconstruction(scorer, base_run)
    dev = resolve_device(device)
    extractor, _ = build_feature_extractor(pcfg.backbone)
    extractor = extractor.to(dev)
    base = create(pcfg, FeatureShape(*extractor.output_shape(pcfg.dataset.scored_size())), dev)
    det = scorer.detector
    objective = detector_objective(base, load_summary(base_run), extractor, det.units(),
                                   pcfg.dataset.scored_size())
    n = len(dataset)
    return torch.cat([det.reconstruct(dataset[i].image[None].to(dev), objective,
                                      desc=f"reconstruction {i + 1}/{n}").cpu()
                      for i in range(n)])


def write_image(image: torch.Tensor, dataset: AnomalyDataset, path: Path) -> None:
    """A normalised ``(3, S, S)`` image as an 8-bit PNG."""
    from PIL import Image

    img = (image * dataset.std + dataset.mean).clamp(0, 1)
    Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def write_reconstructions(images: torch.Tensor, dataset: AnomalyDataset, out: Path) -> None:
    """``reconstructed/<NNN>-<stem>.png``: diffad's anomaly-free image of each input."""
    folder = out / "reconstructed"
    folder.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(dataset.records):
        write_image(images[i], dataset, folder / f"{i:03d}-{Path(record.path).stem}.png")


def write_refined(refined, dataset: AnomalyDataset, out: Path) -> None:
    """A refinement's outputs per image: ``refined/<NNN>-<stem>-mask.png`` (the pixel mask,
    white = anomalous) and ``refined/<NNN>-<stem>-normal.png`` (the estimated normal
    image, ``x - a``)."""
    from PIL import Image

    folder = out / "refined"
    folder.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(dataset.records):
        stem = f"{i:03d}-{Path(record.path).stem}"
        mask = refined.masks[i].numpy().astype(np.uint8) * 255
        Image.fromarray(mask).save(folder / f"{stem}-mask.png")
        write_image(refined.normals[i], dataset, folder / f"{stem}-normal.png")


def write_predictions(preds: list[Prediction], maps: torch.Tensor, dataset: AnomalyDataset,
                      out: str | Path, heatmaps: bool = True, refined=None,
                      reconstructed: torch.Tensor | None = None,
                      skipped: Sequence[Skipped] = ()) -> Path:
    """``scores.csv`` (path, score, threshold, anomalous, error), ``predictions.json`` (the
    images ``skipped`` as unreadable are in both, with their error and no score) and, with
    ``heatmaps``, ``heatmaps/<NNN>-<stem>.png`` under ``out``; with ``refined`` (F2PAD)
    also its masks and estimated normal images (:func:`write_refined`), with
    ``reconstructed`` (diffad) its anomaly-free images (:func:`write_reconstructions`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "threshold", "anomalous", "error"])
        for p in preds:
            w.writerow([p.path, repr(p.score), "" if p.threshold is None else
                        repr(p.threshold), "" if p.anomalous is None else int(p.anomalous), ""])
        for b in skipped:
            w.writerow([b.path, "", "", "", b.error])
    rows = [p.__dict__ for p in preds] + [
        {"path": b.path, "score": None, "threshold": None, "anomalous": None,
         "error": b.error} for b in skipped]
    (out / "predictions.json").write_text(json.dumps(rows, indent=2) + "\n")
    if refined is not None:
        write_refined(refined, dataset, out)
    if reconstructed is not None:
        write_reconstructions(reconstructed, dataset, out)
    if heatmaps:
        from fedad.evaluation.plots import plot_heatmap  # matplotlib only when drawing

        threshold = preds[0].threshold if preds else None
        vmax = 2.0 * threshold if threshold else float(maps.max())
        for i, p in enumerate(preds):
            sample = dataset[i]
            img = (sample.image * dataset.std + dataset.mean).clamp(0, 1).permute(1, 2, 0)
            verdict = "" if p.anomalous is None else (" ANOMALOUS" if p.anomalous else " normal")
            plot_heatmap(img.numpy(), maps[i].numpy(), vmax,
                         f"{Path(p.path).name}: {p.score:.3f}{verdict}",
                         out / "heatmaps" / f"{i:03d}-{Path(p.path).stem}.png")
    return out


def false_alarm_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of (normal) images scoring above ``threshold``."""
    return float(np.mean(np.asarray(scores) > threshold)) if len(scores) else float("nan")
