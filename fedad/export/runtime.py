"""Run an exported scorer with onnxruntime and check it against PyTorch
(:func:`fedad.federation.predict.predict`, the faiss path a run scores with)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedad.data.dataset import AnomalyDataset
from fedad.data.io import FileSource
from fedad.data.sample import SampleRecord
from fedad.export.onnx_export import INPUT, require_package
from fedad.federation.predict import SiteScorer, Skipped, predict, readable_images

log = logging.getLogger("fedad")


def load_images(files: Sequence[str | Path], image_size: int) -> torch.Tensor:
    """``(N, 3, S, S)`` float32 RGB in ``[0, 1]``: the files resized to ``image_size`` as
    :class:`~fedad.data.dataset.AnomalyDataset` resizes them (bilinear, antialiased),
    not normalised (the exported graph normalises)."""
    records = [SampleRecord(path=str(f), label=0, product_type="site") for f in files]
    dataset = AnomalyDataset(records, FileSource(), image_size, [0.0, 0.0, 0.0],
                             [1.0, 1.0, 1.0], has_masks=False)
    return torch.stack([dataset[i].image for i in range(len(dataset))])


def session(model: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of ``model`` (``threads``: intra-op threads, default
    onnxruntime's).

    Raises:
        FedadError: onnxruntime is not installed (how to install it).
    """
    require_package("onnxruntime", "running an exported scorer")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess, images: torch.Tensor | np.ndarray, batch_size: int = 8
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``map`` ``(N, S, S)``, ``score`` ``(N,)`` and ``decision`` ``(N,)`` of ``images``
    ``(N, 3, S, S)`` in ``[0, 1]``, ``batch_size`` at a time."""
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = [sess.run(None, {INPUT: x[a:a + batch_size]})
             for a in range(0, x.shape[0], batch_size)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore


@dataclass
class Comparison:
    """onnxruntime against PyTorch on the same images: the largest absolute differences of
    the maps and of the image scores, the largest PyTorch score (the scale), how many
    decisions differ and how many of those are ties: a score within the largest score
    difference of the threshold (float32 rounding decides them; the threshold is a
    quantile of held-out scores, so an image scored at it is common)."""

    images: int
    max_map_diff: float
    max_score_diff: float
    score_scale: float
    decisions_differ: int
    decisions_at_threshold: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # unreadable, with --skip-bad

    def as_dict(self) -> dict:
        return asdict(self)


def compare(model: str | Path, run_dir: str | Path, folder: str | Path, site: int,
            scorer: SiteScorer | None = None, threads: int | None = None,
            skip_bad: bool = False) -> Comparison:
    """Score every image of ``folder`` with the exported ``model`` (onnxruntime) and with
    PyTorch (:func:`~fedad.federation.predict.predict`: the run's own scoring path, faiss
    k-NN), and compare maps, scores and decisions (``skip_bad``: the readable images only;
    the others are in the result's ``skipped``)."""
    files, skipped = readable_images(folder, skip_bad)
    preds, maps, _, _ = predict(run_dir, folder, site, device="cpu", skip_bad=skip_bad,
                                scorer=scorer)
    size = maps.shape[-1]
    onnx_maps, onnx_scores, onnx_flags = run_onnx(session(model, threads),
                                                  load_images(files, size))
    ref_scores = np.array([p.score for p in preds], dtype=np.float64)
    ref_flags = np.array([bool(p.anomalous) for p in preds])
    differ = onnx_flags.astype(bool) != ref_flags
    score_diff = np.abs(onnx_scores.astype(np.float64) - ref_scores)
    at_threshold = np.array([p.threshold is not None
                             and abs(p.score - p.threshold) <= score_diff.max()
                             for p in preds], dtype=bool)
    out = Comparison(
        images=len(preds),
        max_map_diff=float(np.abs(onnx_maps.astype(np.float64) - maps.double().numpy()).max()),
        max_score_diff=float(score_diff.max()),
        score_scale=float(np.abs(ref_scores).max()),
        decisions_differ=int(differ.sum()),
        decisions_at_threshold=int((differ & at_threshold).sum()),
        skipped=skipped)
    log.info("onnxruntime vs PyTorch on %d images: max |map diff| %.3g, max |score diff| %.3g "
             "(scores up to %.4g), %d decisions differ (%d at the threshold)", out.images,
             out.max_map_diff, out.max_score_diff, out.score_scale, out.decisions_differ,
             out.decisions_at_threshold)
    return out
