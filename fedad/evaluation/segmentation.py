"""Binary segmentation metrics (F2PAD's Eq. 17) and the thresholds masks are cut at.

* :func:`iou_dice`: IoU and DICE (x100), the mean over the images that have a defect (an
  image without one has no IoU; the paper's sets have a defect in every test image), and
  the pooled values over every pixel of every image (false alarms on normal images count
  there);
* :func:`f1_threshold`: the pixel threshold of largest F1 over a set of maps and masks
  (the paper's protocol, following PaDiM; it reads the test masks, so it is an *oracle*);
* :func:`calibrated_threshold`: what a site can deploy, from its held-out normals only: the
  ``quantile`` of their maps' maxima, so about ``1 - quantile`` of normal images show any
  anomalous pixel.
"""

from __future__ import annotations

import numpy as np
import torch

from fedad.errors import DataError
from fedad.evaluation.metrics import _split, _to_numpy, f1_curve


def iou_dice(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray
             ) -> dict[str, float]:
    """``iou``, ``dice`` (per-image mean over images with a defect) and ``iou_pooled``,
    ``dice_pooled`` of binary ``pred`` against ``gt``, both ``(N, H, W)``, x100.

    Raises:
        DataError: shapes differ, or no image has a defect.
    """
    p, g = _to_numpy(pred).astype(bool), _to_numpy(gt).astype(bool)
    if p.shape != g.shape or p.ndim != 3:
        raise DataError(f"masks of shape {p.shape} against ground truth {g.shape}")
    inter = (p & g).sum(axis=(1, 2)).astype(np.float64)
    union = (p | g).sum(axis=(1, 2)).astype(np.float64)
    sizes = p.sum(axis=(1, 2)) + g.sum(axis=(1, 2)).astype(np.float64)
    has = g.any(axis=(1, 2))
    if not has.any():
        raise DataError("IoU/DICE need at least one image with a defect")
    return {"iou": float(100 * np.mean(inter[has] / union[has])),
            "dice": float(100 * np.mean(2 * inter[has] / sizes[has])),
            "iou_pooled": float(100 * inter.sum() / max(union.sum(), 1.0)),
            "dice_pooled": float(100 * 2 * inter.sum() / max(sizes.sum(), 1.0))}


def f1_threshold(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> float:
    """The threshold ``t`` (a pixel is anomalous where ``map >= t``) of largest pixel F1
    (:func:`~fedad.evaluation.metrics.f1_curve`, the curve ``p_f1_max`` is the maximum of).

    Raises:
        DataError: no anomalous pixel.
    """
    s, g = _to_numpy(maps).astype(np.float32).ravel(), _to_numpy(masks).astype(bool).ravel()
    if not g.any():
        raise DataError("the F1-optimal threshold needs anomalous pixels")
    normal, anomalous, _ = _split(s, g)
    return float(anomalous[int(np.argmax(f1_curve(normal, anomalous)))])


def calibrated_threshold(normal_maps: torch.Tensor | np.ndarray, quantile: float) -> float:
    """The ``quantile`` of the per-image maxima of maps of held-out *normal* images.

    Raises:
        DataError: no maps.
    """
    m = _to_numpy(normal_maps)
    if m.shape[0] == 0:
        raise DataError("a calibrated threshold needs held-out normal images")
    return float(np.quantile(m.reshape(m.shape[0], -1).max(axis=1), quantile))
