"""F2PAD's feature loss ``l_n(n)`` (Eq. 4-7): the sum of the detector's patch scores of the
estimated normal image's features, over the feature positions the optimised region touches
(Sec. III-E2: only the scores the region affects). Built once per image from the features
of the initial estimate ``n0``; called on the features of every iterate ``n``.

Which loss a detector gets follows from the capabilities it declares
(:mod:`fedad.detectors.capabilities`):

* a score by the nearest bank row (:class:`NearestBank`, PatchCore; Eq. 5): squared L2
  distance to the nearest of ``|M_ij|`` candidates, the global bank's nearest rows of
  ``n0``'s feature at that position (Eq. 4 approximated, so a step costs ``|M_ij|``
  distances per position instead of the whole bank's);
* one Gaussian per position (:class:`PositionalGaussian`, PaDiM; Eq. 7): squared
  Mahalanobis distance to that position's Gaussian;
* any other :class:`~fedad.detectors.capabilities.Differentiable` detector (FedDyMem: its
  nearest-bank distance through the trained head): its score map summed over the touched
  region, in feature cells (the map is the patch scores upsampled and smoothed, so the sum
  is the patch scores' sum up to the smoothing at the region's border).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from fedad.components.gaussian import squared_mahalanobis
from fedad.components.knn import torch_knn
from fedad.detectors.base import Detector
from fedad.detectors.capabilities import NearestBank, PositionalGaussian
from fedad.evaluation.scores import differentiable

FeatureLoss = Callable[[torch.Tensor], torch.Tensor]  # features (1, C, H, W) -> scalar


def _rows(features: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The feature rows ``(P, C)`` at the ``where`` ``(H, W)`` positions of one image."""
    return features[0].permute(1, 2, 0)[where]


def patchcore_loss(bank: torch.Tensor, f0: torch.Tensor, where: torch.Tensor,
                   candidates: int) -> FeatureLoss:
    """Eq. 5: ``sum_ij min_{f_m in M_ij} ||f_ij - f_m||^2`` with ``M_ij`` the ``candidates``
    nearest rows of ``bank`` ``(M, C)`` to ``f0``'s row at ``(i, j)``."""
    k = min(int(candidates), bank.shape[0])
    with torch.no_grad():
        _, near = torch_knn(_rows(f0, where).float(), bank, k)
    cand = bank[near]  # (P, k, C)

    def loss(features: torch.Tensor) -> torch.Tensor:
        rows = _rows(features, where).float()
        return (rows[:, None] - cand).pow(2).sum(-1).amin(-1).sum()

    return loss


def padim_loss(mean: torch.Tensor, inv: torch.Tensor, idx: np.ndarray,
               where: torch.Tensor, origin: tuple[int, int] = (0, 0),
               grid: tuple[int, int] | None = None) -> FeatureLoss:
    """Eq. 7: ``sum_ij (f_ij - mu_ij)^T Lambda_ij^-1 (f_ij - mu_ij)`` over the channel subset
    ``idx``, ``mean`` ``(H*W, d)`` and ``inv`` ``(H*W, d, d)`` the global Gaussians of a
    ``grid`` ``(H, W)`` (default: ``where``'s). ``where`` may be a crop of the image whose
    first cell is the global cell ``origin``."""
    gh, gw = grid or tuple(where.shape)
    ys, xs = where.nonzero(as_tuple=True)
    flat = (ys + origin[0]) * gw + (xs + origin[1])
    mu, lam = mean[flat], inv[flat]
    index = torch.as_tensor(np.asarray(idx), dtype=torch.long)

    def loss(features: torch.Tensor) -> torch.Tensor:
        rows = _rows(features.index_select(1, index.to(features.device)), where)
        return squared_mahalanobis(rows[:, None], mu, lam).sum()

    return loss


def map_loss(detector: Detector, summary: Mapping[str, np.ndarray], where: torch.Tensor,
             image_size: int) -> FeatureLoss:
    """Any differentiable detector: its score map summed over ``where`` (upsampled to the
    image), divided by the pixels per feature cell."""
    scorer = differentiable(detector)
    summary = dict(summary)
    h, w = where.shape
    cells = torch.nn.functional.interpolate(where[None, None].float(), size=(image_size,) * 2,
                                            mode="nearest")[0, 0]
    per_cell = (image_size * image_size) / (h * w)

    def loss(features: torch.Tensor) -> torch.Tensor:
        maps = scorer.score_features(features, summary, image_size).maps[0]
        return (maps * cells.to(maps)).sum() / per_cell

    return loss


def crops(detector: Detector) -> bool:
    """Whether ``detector``'s loss can score the features of a crop of the image: it
    declares a score by the nearest bank row (:class:`NearestBank`, Eq. 5) or by one
    Gaussian per position (:class:`PositionalGaussian`, Eq. 7)."""
    return isinstance(detector, (NearestBank, PositionalGaussian))


def feature_loss(detector: Detector, summary: Mapping[str, np.ndarray], f0: torch.Tensor,
                 where: torch.Tensor, image_size: int, candidates: int = 50,
                 origin: tuple[int, int] = (0, 0), grid: tuple[int, int] | None = None
                 ) -> FeatureLoss:
    """``l_n`` for ``detector`` against the global ``summary``, built from the features
    ``f0`` ``(1, C, h, w)`` of the initial estimate; ``where`` ``(h, w)`` bool, the positions
    that count. With :func:`crops`, ``f0`` may be of a crop whose first cell is the global
    cell ``origin`` of the whole image's ``grid``.

    Raises:
        ConfigError: the detector has no differentiable score.
    """
    where = where.to(f0.device)
    if isinstance(detector, NearestBank):
        bank = detector.bank_rows(summary).to(f0.device)
        return patchcore_loss(bank, f0, where, candidates)
    if isinstance(detector, PositionalGaussian):
        mean, inv = detector.gaussians(summary)
        return padim_loss(mean, inv, detector.channel_subset(), where, origin,
                          grid or tuple(where.shape))
    return map_loss(detector, summary, where, image_size)
