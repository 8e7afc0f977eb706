"""Algorithm 1 of F2PAD for one image: from the base detector's mask ``m0`` to the
pixel-level anomaly ``a = x - n`` and its mask ``m*``.

1. the region optimised: ``m0`` dilated by ``f2pad.dilation`` pixels (a disk);
2. ``n0``: that region inpainted (:mod:`.init`; ``f2pad.inpaint=mask``: ``m0`` only, as
   the paper's MAE does); the feature loss counts only the positions the region touches
   (Sec. III-E2), one feature cell wider for the 3x3 neighbourhood averaging of features;
3. minimise Eq. 12 there (:mod:`.solver`), ``beta = beta0 / |m0|`` (Sec. IV-A3);
4. ``m* = {||a|| > f2pad.mask_threshold}`` (grey levels; Eq. 2's ``a != 0``);
5. re-estimate ``n`` with ``beta = 0`` inside ``m*`` (Sec. III-E3);
6. open ``m*`` with a 3x3 square.

Two choices the paper leaves open, fixed a priori: the optimiser works in the paper's pixel
units (ImageNet normalisation: its clip of 0.03,
Eq. 14's colour bandwidth and Eq. 15's step are in them) whatever the backbone's
normalisation; ``n`` is mapped to the backbone's units (a fixed affine map) before the
features are taken; and ``l_n`` is divided by the mean patch score of ``n0`` over the
positions it counts, so it starts near the number of those positions whatever the
backbone's or the detector's distance scale (squared distances of EfficientNet features
are not ResNet18's), which makes ``beta0``, ``alpha1`` and the paper's absolute stopping
tolerance mean the same for PatchCore, PaDiM and FedDyMem.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fedad.detectors.base import Detector
from fedad.features.extractor import FeatureExtractor
from fedad.refinements.f2pad.config import F2PADConfig
from fedad.refinements.f2pad.feature_loss import crops, feature_loss
from fedad.refinements.f2pad.init import initial_normal
from fedad.refinements.f2pad.losses import objective
from fedad.refinements.f2pad.prior import PixelPrior
from fedad.refinements.f2pad.solver import solve
from fedad.refinements.f2pad.step import grey_level

PAPER_MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation: the paper's pixel units
PAPER_STD = (0.229, 0.224, 0.225)
EMPTY, REFINED, DIVERGED = "empty", "refined", "diverged"


@dataclass(frozen=True)
class Units:
    """The backbone's normalisation ``mean``/``std`` ``(3, 1, 1)`` and the paper's."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> Units:
        return cls(torch.tensor([float(v) for v in mean]).view(3, 1, 1),
                   torch.tensor([float(v) for v in std]).view(3, 1, 1))

    paper_mean: torch.Tensor = field(default_factory=lambda: torch.tensor(PAPER_MEAN).view(3, 1, 1))
    paper_std: torch.Tensor = field(default_factory=lambda: torch.tensor(PAPER_STD).view(3, 1, 1))

    def to_paper(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone-normalised pixels -> the paper's units."""
        return (x * self.std.to(x) + self.mean.to(x) - self.paper_mean.to(x)) / \
            self.paper_std.to(x)

    def to_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's units -> backbone-normalised pixels (differentiable)."""
        return (x * self.paper_std.to(x) + self.paper_mean.to(x) - self.mean.to(x)) / \
            self.std.to(x)

    def grey(self, a: torch.Tensor) -> torch.Tensor:
        """Colour norm per pixel ``(H, W)`` of a difference ``(3, H, W)`` in paper units,
        in 8-bit grey levels."""
        return (a * self.paper_std.to(a) * 255.0).norm(dim=-3)


@dataclass
class Refined:
    """One image refined: ``mask`` ``(H, W)`` bool (``m*``), ``amap`` ``(H, W)`` float32
    (``||a||`` in grey levels, the continuous map), ``normal`` ``(3, H, W)`` the estimated
    normal image (backbone units), iterations of both solves, seconds, ``status``
    (``refined``, ``empty``: no base mask, nothing to refine; ``diverged``: a non-finite
    loss, the base mask kept)."""

    mask: torch.Tensor
    amap: torch.Tensor
    normal: torch.Tensor
    iterations: int
    seconds: float
    status: str


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` ``(H, W)`` grown by a disk of ``radius`` pixels."""
    if radius <= 0:
        return mask.clone()
    far = ndimage.distance_transform_edt(~mask.cpu().numpy().astype(bool))
    return torch.from_numpy(far <= radius).to(mask.device)


def opened(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``mask`` opened with a ``size`` x ``size`` square (no-op for ``size < 2``)."""
    if size < 2:
        return mask.clone()
    out = ndimage.binary_opening(mask.cpu().numpy().astype(bool),
                                 structure=np.ones((size, size), bool))
    return torch.from_numpy(out).to(mask.device)


def crop_box(region: torch.Tensor, margin: int, align: int = 32) -> tuple[slice, slice]:
    """Rows and columns of ``region``'s bounding box grown by ``margin`` pixels, its start
    and size rounded out to multiples of ``align`` (so every backbone level's cells of the
    crop are cells of the whole image), within the image."""
    out = []
    for axis in (0, 1):
        hit = region.any(dim=1 - axis).nonzero()[:, 0]
        size = region.shape[axis]
        lo = max(int(hit.min()) - margin, 0) // align * align
        hi = min(-(-(int(hit.max()) + 1 + margin) // align) * align, size)
        out.append(slice(lo, hi))
    return out[0], out[1]


def touched(region: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Feature positions ``grid`` whose cell (or a neighbouring cell) meets ``region``."""
    cells = F.adaptive_max_pool2d(region[None, None].float(), grid)
    return (F.max_pool2d(cells, 3, stride=1, padding=1)[0, 0] > 0)


def refine_image(x: torch.Tensor, m0: torch.Tensor, extractor: FeatureExtractor,
                 detector: Detector, summary: Mapping[str, np.ndarray], prior: PixelPrior,
                 cfg: F2PADConfig, units: Units, tolerance: float,
                 reconstructor: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> Refined:
    """Algorithm 1 on ``x`` ``(3, S, S)`` (backbone-normalised) from its base mask ``m0``
    ``(S, S)`` (bool), against the global ``summary``; ``prior`` in the paper's units.
    ``reconstructor`` (``f2pad.init=diffusion|nearest``): ``x`` -> its anomaly-free image
    (diffad's, or the nearest normal training image), both backbone-normalised."""
    t = time.perf_counter()
    m0 = m0.bool()
    if not bool(m0.any()):
        return Refined(m0.clone(), torch.zeros(m0.shape), x.clone(), 0, 0.0, EMPTY)
    xp_full = units.to_paper(x.float())
    size = int(x.shape[-1])
    region_full = dilate(m0, cfg.dilation)
    recon = None
    if cfg.init in ("diffusion", "nearest"):
        if reconstructor is None:
            raise ValueError(f"f2pad.init={cfg.init} needs a reconstructor")
        recon = units.to_paper(reconstructor(x.float()).float())
    n0_full = initial_normal(xp_full, region_full if cfg.inpaint == "region" else m0,
                             cfg.init, recon)
    # Sec. III-E2: the backbone sees only the region's box and some context (detectors
    # whose loss scores a crop; any other: the whole image)
    box = crop_box(region_full, cfg.margin) if crops(detector) else (slice(None),) * 2
    xp, region, n0, m0c = (xp_full[(slice(None), *box)], region_full[box],
                           n0_full[(slice(None), *box)], m0[box])
    with torch.no_grad():
        f0 = extractor.fuse(units.to_backbone(n0)[None])
    where = touched(region, tuple(f0.shape[-2:]))
    stride = extractor.reduction
    raw = feature_loss(detector, summary, f0, where, size, cfg.candidates,
                       origin=((box[0].start or 0) // stride, (box[1].start or 0) // stride),
                       grid=tuple(extractor.output_shape(size)[1:]))
    with torch.no_grad():  # l_n in units of n0's mean patch score (see the module's notes)
        scale = max(float(raw(f0)) / max(int(where.sum()), 1), 1e-12)

    def ln(features: torch.Tensor) -> torch.Tensor:
        return raw(features) / scale

    alpha1 = cfg.alpha1 if cfg.prior else 0.0
    beta = cfg.beta0 / float(m0c.sum()) if cfg.sparsity else 0.0

    def F_of(beta_: float, where: torch.Tensor):
        def f(n: torch.Tensor) -> torch.Tensor:
            return objective(ln(extractor.fuse(units.to_backbone(n)[None])), n, xp,
                             prior.means, prior.inv_covs, alpha1, cfg.alpha2, beta_, where)
        return f

    floor = grey_level(PAPER_STD)
    low = (0.0 - units.paper_mean) / units.paper_std  # what an 8-bit image can hold
    high = (1.0 - units.paper_mean) / units.paper_std

    def whole(n: torch.Tensor) -> torch.Tensor:  # a crop's estimate in the whole image
        out = n0_full.clone()
        out[(slice(None), *box)] = n
        return out

    first = solve(xp, n0, region, F_of(beta, region), cfg, tolerance, floor, low, high)
    if first.diverged:
        return Refined(m0.clone(), units.grey(xp_full - n0_full).float(),
                       units.to_backbone(n0_full), first.iterations,
                       time.perf_counter() - t, DIVERGED)
    amap = units.grey(xp - first.n) * region
    mask = amap > cfg.mask_threshold
    n, iterations = first.n, first.iterations
    if cfg.reestimate and bool(mask.any()):
        again = solve(xp, n, mask, F_of(0.0, mask), cfg, tolerance, floor, low, high)
        iterations += again.iterations
        if not again.diverged:
            n = again.n
    full_map = torch.zeros(m0.shape)
    full_map[box] = amap.float()
    full_mask = torch.zeros(m0.shape, dtype=torch.bool)
    full_mask[box] = opened(mask, cfg.opening)
    return Refined(full_mask, full_map, units.to_backbone(whole(n)), iterations,
                   time.perf_counter() - t, REFINED)
