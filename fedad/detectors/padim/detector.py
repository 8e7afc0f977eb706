"""PaDiM (Defard et al. 2021) on the :class:`~fedad.detectors.base.Detector` contract.

Federated by exact Gaussian statistics: each client uploads ``count``, ``mean`` and the
upper triangle of its *centred* ``scatter`` (``sum_k (x_k - mu)(x_k - mu)^T``) per position
on a shared random channel subset; the server combines them by the pairwise update
(:func:`~fedad.components.gaussian.combine_statistics`); every client turns the result into
the Gaussian of Eq. 1 and scores test patches by the Mahalanobis distance of Eq. 2. One
round gives the centralized model up to float64 rounding (``iterative = False``).

With ``privacy.epsilon > 0`` the upload is the same triple released with differential
privacy: rows clipped, Gaussian noise on the sums (:mod:`fedad.privacy.statistics`), one
release per site.

Features are the raw backbone levels, upsampled and concatenated, as published and as
anomalib does (``padim.avg_pool=false``; ``true`` averages each level over 3x3 first, as
PatchCore does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from fedad.components.gaussian import (
    combine_statistics,
    diagonal_positions,
    gaussian,
    inverse_covariance,
    mahalanobis,
    pack_upper,
    packed_size,
    position_statistics,
    unpack_upper,
)
from fedad.components.maps import anomaly_maps, image_scores
from fedad.components.validate import check_array, require_keys
from fedad.config.schema import RunConfig, SecureConfig
from fedad.detectors.base import (
    Detector,
    FeatureShape,
    FitInfo,
    Reads,
    Scores,
    Summary,
    summary_fingerprint,
)
from fedad.detectors.capabilities import (
    PositionalGaussian,
    PrivateRelease,
    SecureSums,
    StreamedFit,
)
from fedad.detectors.padim.statistics import channel_subset, position_rows
from fedad.errors import BankError, ConfigError
from fedad.features.stream import FeatureFile
from fedad.privacy.accountant import calibrated
from fedad.privacy.noise import generator, site_seed
from fedad.privacy.statistics import private_statistics, statistics_from_sums

KEYS = ("count", "mean", "scatter")
MAX_COUNT = 10**9  # images one upload may claim
UPLOAD_DTYPES = {"float64": np.float64, "float32": np.float32}


def _subset(shape: FeatureShape, cfg: RunConfig) -> np.ndarray:
    return channel_subset(shape.channels, cfg.padim.channels, cfg.padim.channel_seed)


def upload_nbytes(shape: FeatureShape, cfg: RunConfig) -> int:
    """Bytes of one client's upload: ``count`` (int64), ``mean`` ``(P, d)`` and the packed
    ``scatter`` ``(P, d(d+1)/2)`` in ``cfg.padim.upload_dtype``."""
    if cfg.padim.upload_dtype not in UPLOAD_DTYPES:
        raise ConfigError(f"padim.upload_dtype must be one of {sorted(UPLOAD_DTYPES)}, "
                          f"got {cfg.padim.upload_dtype!r}")
    d = len(_subset(shape, cfg))
    item = np.dtype(UPLOAD_DTYPES[cfg.padim.upload_dtype]).itemsize
    return 8 + shape.positions * (d + packed_size(d)) * item


class PaDiM(Detector, PrivateRelease, SecureSums, StreamedFit, PositionalGaussian):
    """A Gaussian per feature position over ``cfg.padim.channels`` random channels.

    The channel subset is drawn from ``cfg.padim.channel_seed`` (shared by all clients and
    the server), not from ``seed`` (which differs per client and is unused: PaDiM has no
    randomness of its own).
    """

    name: ClassVar[str] = "padim"
    iterative: ClassVar[bool] = False
    first_round: ClassVar[int] = 1

    @classmethod
    def reads(cls, cfg: RunConfig) -> Reads:
        """``padim.strides`` (4/8/16), raw unless ``padim.avg_pool`` (as published)."""
        return Reads(tuple(int(s) for s in cfg.padim.strides), cfg.padim.avg_pool)

    def gaussians(self, summary: Mapping[str, np.ndarray]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`model` of ``summary``."""
        return self.model(dict(summary))

    def channel_subset(self) -> np.ndarray:
        return self.idx

    def __init__(self, cfg: RunConfig, shape: FeatureShape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        if cfg.padim.epsilon < 0:
            raise ConfigError(f"padim.epsilon must be >= 0, got {cfg.padim.epsilon}")
        if cfg.padim.upload_dtype not in UPLOAD_DTYPES:
            raise ConfigError(f"padim.upload_dtype must be one of {sorted(UPLOAD_DTYPES)}, "
                              f"got {cfg.padim.upload_dtype!r}")
        self.cfg = cfg
        self.shape = shape
        self.device = torch.device(device)
        self.seed = seed
        self.idx = _subset(shape, cfg)
        self.d = len(self.idx)
        self._stats: dict[str, np.ndarray] | None = None  # this client's, scatter full
        self._cache: tuple[bytes, torch.Tensor, torch.Tensor] | None = None
        # the arrays the cache was last found for, held so their ids stay theirs: scoring
        # again against the same arrays (every batch of a round, every fedad-predict call)
        # finds the cache without hashing the summary (~250 MB at 224 px) again
        self._seen: tuple[tuple[str, int], ...] = ()
        self._held: list[np.ndarray] = []
        self.inversions = 0  # how many times score() inverted covariances (cache misses)
        self.fingerprints = 0  # how many times model() hashed a summary

    # -- client side -------------------------------------------------------------------------
    def _check_features(self, features: torch.Tensor) -> None:
        want = (self.shape.channels, self.shape.height, self.shape.width)
        if features.ndim != 4 or tuple(features.shape[1:]) != want or features.shape[0] < 1:
            raise ConfigError(f"padim: features of shape {tuple(features.shape)}, expected "
                              f"(N >= 1, {want[0]}, {want[1]}, {want[2]})")

    @classmethod
    def private_releases(cls, cfg: RunConfig) -> int:
        """Gaussian mechanisms one site's run releases with ``privacy.epsilon > 0``: its
        one upload."""
        return 1

    def private_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, P, d)``: the rows the private release clips (one image at one position,
        on the channel subset)."""
        self._check_features(features)
        return position_rows(features, self.idx)

    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        """This client's Gaussian statistics (the global summary is not needed); with
        ``privacy.epsilon > 0`` their private release, its budget in the notes."""
        self._check_features(features)
        start = time.perf_counter()
        rows = position_rows(features, self.idx)
        pv = self.cfg.privacy
        if pv.epsilon > 0:
            budget = calibrated(pv, self.private_releases(self.cfg))
            self._stats = private_statistics(rows.cpu(), pv.clip, budget.noise_multiplier,
                                             generator(site_seed(pv.seed, self.seed)))
            return FitInfo(loss=0.0, seconds={"statistics": time.perf_counter() - start},
                           notes=budget.notes())
        self._stats = position_statistics(rows, device=self.device)
        return FitInfo(loss=0.0, seconds={"statistics": time.perf_counter() - start})

    def fit_stream(self, features: FeatureFile, global_summary: Summary | None,
                   round_t: int) -> FitInfo:
        """:meth:`fit` from features read ``backbone.stream_chunk`` images at a time: each
        chunk's statistics joined to the running ones by the pairwise update (the server's
        merge), so they equal the one-shot statistics up to float64 rounding; memory holds
        one chunk and the statistics."""
        self._check_features(features)
        start = time.perf_counter()
        stats = None
        for chunk in features.chunks(self.cfg.backbone.stream_chunk):
            part = position_statistics(position_rows(chunk, self.idx), device=self.device)
            stats = part if stats is None else combine_statistics([stats, part])
        self._stats = stats
        return FitInfo(loss=0.0, seconds={"statistics": time.perf_counter() - start})

    def summarize(self, round_t: int) -> Summary:
        """``count`` int64 ``(1,)``, ``mean`` ``(P, d)`` and packed centred ``scatter``
        ``(P, d(d+1)/2)`` in ``cfg.padim.upload_dtype``."""
        if self._stats is None:
            raise RuntimeError("padim: summarize() before fit()")
        dt = UPLOAD_DTYPES[self.cfg.padim.upload_dtype]
        return {"count": self._stats["count"].astype(np.int64),
                "mean": self._stats["mean"].astype(dt),
                "scatter": pack_upper(self._stats["scatter"], dt)}

    def model(self, global_summary: Summary, chunk: int = 512
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(P, d)`` and inverse covariance ``(P, d, d)`` (float32, on the device) of
        the global statistics; cached, so scoring twice against them inverts once.

        The cache is keyed by the summary's contents, hashed once per new set of arrays
        (a round's global summary): scoring again against the very same array objects
        skips the hash. A summary's arrays are not to be changed in place after they were
        scored against (the engine never does; change a copy)."""
        seen = tuple(sorted((k, id(v)) for k, v in global_summary.items()))
        if self._cache is not None and seen == self._seen:
            return self._cache[1], self._cache[2]
        key = summary_fingerprint(global_summary)
        self.fingerprints += 1
        self._seen, self._held = seen, list(global_summary.values())
        if self._cache is None or self._cache[0] != key:
            stats = self.validate(global_summary, "global summary")
            p, d = self.shape.positions, self.d
            mean = torch.empty(p, d, dtype=torch.float32, device=self.device)
            inv = torch.empty(p, d, d, dtype=torch.float32, device=self.device)
            for start in range(0, p, chunk):  # bounded float64 temporaries
                part = slice(start, start + chunk)
                mu, cov = gaussian({"count": stats["count"], "mean": stats["mean"][part],
                                    "scatter": stats["scatter"][part]}, self.cfg.padim.epsilon)
                mean[part] = torch.from_numpy(mu).to(self.device, torch.float32)
                inv[part] = inverse_covariance(cov, torch.float32, self.device)
            self._cache = (key, mean, inv)
            self.inversions += 1
        return self._cache[1], self._cache[2]

    @torch.no_grad()
    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int, batch_size: int = 32) -> Scores:
        """Eq. 2 Mahalanobis map ``(N, H, W)``, upsampled and smoothed to ``(N, S, S)``;
        image score = the map's maximum. ``batch_size`` images at a time."""
        self._check_features(features)
        mean, inv = self.model(global_summary)
        maps = torch.cat([self._maps(features[a:a + batch_size], mean, inv, image_size).cpu()
                          for a in range(0, features.shape[0], batch_size)])
        return Scores(maps=maps, image=image_scores(maps))

    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`score` with gradients to ``features``: the same Gaussian (cached, no
        gradient), Eq. 2 in torch; equal to :meth:`score` within float32 rounding."""
        self._check_features(features)
        maps = self._maps(features, *self.model(global_summary), image_size)
        return Scores(maps=maps, image=image_scores(maps))

    def _maps(self, features: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor,
              image_size: int) -> torch.Tensor:
        """Eq. 2 per position, upsampled and smoothed (gradients if ``features`` has them)."""
        s = self.shape
        rows = position_rows(features.to(inv.device, inv.dtype), self.idx).transpose(0, 1)
        dist = mahalanobis(rows, mean, inv).T.reshape(-1, s.height, s.width)
        return anomaly_maps(dist, image_size, self.cfg.score.sigma)

    def state(self) -> dict[str, torch.Tensor]:
        """Nothing: scoring needs only the global statistics, and a frozen-feature detector
        has no later round (the client's own statistics leave with its upload)."""
        return {}

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        """Nothing to restore (see :meth:`state`)."""

    # -- server side (pure) --------------------------------------------------------------------
    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        """Keys, shapes, dtypes, finite values, ``1 <= count <= MAX_COUNT``, and a scatter
        that real vectors could give: sums of squares ``>= 0`` and
        ``s_ij^2 <= s_ii * s_jj`` (Cauchy-Schwarz) per position.

        Returns float64 ``mean``/``scatter`` and int64 ``count``.

        Raises:
            BankError: naming ``who`` and what is wrong.
        """
        require_keys(summary, KEYS, who)
        p, d = self.shape.positions, self.d
        count = check_array(summary["count"], who, "count", shape=(1,), kind="i")
        n = int(count[0])
        if not 1 <= n <= MAX_COUNT:
            raise BankError(f"{who}: 'count' is {n}, expected between 1 and {MAX_COUNT}")
        mean = check_array(summary["mean"], who, "mean", shape=(p, d))
        scatter = check_array(summary["scatter"], who, "scatter", shape=(p, packed_size(d)))
        rtol = max(1e-9, 64 * float(np.finfo(scatter.dtype).eps))
        scatter = scatter.astype(np.float64)
        _check_scatter(scatter, d, rtol, who)
        return {"count": np.array([n], dtype=np.int64), "mean": mean.astype(np.float64),
                "scatter": scatter}

    def descriptor(self, summary: Summary) -> np.ndarray:
        """Per-position mean and per-channel variance of the client's features, flattened."""
        n = float(summary["count"][0])
        mean = np.asarray(summary["mean"], dtype=np.float64)
        var = np.asarray(summary["scatter"], dtype=np.float64)[:, diagonal_positions(self.d)]
        return np.concatenate([mean.ravel(), (var / max(n - 1.0, 1.0)).ravel()])

    # -- secure aggregation: the statistics as sums (secure.enabled) -------------------------
    @staticmethod
    def sum_scales(secure: SecureConfig) -> dict[str, float]:
        """``count``, ``first`` = ``sum x`` and packed ``second`` = ``sum x x^T`` per
        position, bounded by ``secure.max_images`` images of entries ``|x_j| <=
        secure.bound``."""
        n, b = float(secure.max_images), secure.bound
        return {"count": n, "first": n * b, "second": n * b * b}

    def sum_terms(self, summary: Summary) -> dict[str, np.ndarray]:
        """This site's sums from its upload: ``n mu`` and ``S + n mu mu^T``."""
        stats = self.validate(summary, "own upload")
        n, mean = float(stats["count"][0]), stats["mean"]
        return {"count": np.array([n]), "first": n * mean,
                "second": stats["scatter"] + n * pack_upper(mean[:, :, None] * mean[:, None, :])}

    def from_sums(self, sums: Mapping[str, np.ndarray]) -> Summary:
        """The global statistics from the sites' summed terms: ``count`` rounded,
        ``mu = sum x / n``, ``S = sum x x^T - n mu mu^T``, checked as an upload is; a
        scatter that quantisation left outside what real vectors give is projected onto the
        positive semi-definite matrices first."""
        d, p = self.d, self.shape.positions
        first = np.asarray(sums["first"], dtype=np.float64)
        second = np.asarray(sums["second"], dtype=np.float64)
        if first.shape != (p, d) or second.shape != (p, packed_size(d)):
            raise BankError(f"secure sum: padim sums of shapes {first.shape}, "
                            f"{second.shape}, expected {(p, d)}, {(p, packed_size(d))}")
        n = float(np.asarray(sums["count"], dtype=np.float64).reshape(-1)[0])
        if not np.isfinite(n) or round(n) < 1:
            raise BankError(f"secure sum: padim count {n}")
        mean = first / round(n)
        scatter = second - round(n) * pack_upper(mean[:, :, None] * mean[:, None, :])
        summary = {"count": np.array([round(n)], dtype=np.int64), "mean": mean,
                   "scatter": scatter}
        try:
            return self.validate(summary, "secure sum")
        except BankError:
            stats = statistics_from_sums({"count": torch.tensor(float(round(n))),
                                          "first": torch.from_numpy(first),
                                          "second": torch.from_numpy(unpack_upper(second, d))},
                                         1.0)
            return self.validate({"count": stats["count"], "mean": stats["mean"],
                                  "scatter": pack_upper(stats["scatter"])}, "secure sum")

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        """The statistics of all clients' images together (pairwise update in float64,
        ``scatter`` packed)."""
        if not summaries:
            raise BankError("padim: no valid uploads to merge")
        merged = combine_statistics(summaries)
        if not (np.isfinite(merged["mean"]).all() and np.isfinite(merged["scatter"]).all()):
            raise BankError("padim: merged statistics overflow (non-finite values)")
        if int(merged["count"][0]) > MAX_COUNT:
            raise BankError(f"padim: merged count {int(merged['count'][0])} exceeds {MAX_COUNT}")
        return merged


def _check_scatter(scatter: np.ndarray, d: int, rtol: float, who: str,
                   chunk: int = 256) -> None:
    """Raise unless ``scatter`` could come from real vectors (see :meth:`PaDiM.validate`)."""
    diag = scatter[:, diagonal_positions(d)]
    if (diag < 0).any():
        p, c = np.argwhere(diag < 0)[0]
        raise BankError(f"{who}: 'scatter' has {int((diag < 0).sum())} negative sums of "
                        f"squares (e.g. position {p}, channel {c})")
    root = np.sqrt(diag)
    tiny = 1e-100
    rows, cols = np.triu_indices(d)
    for start in range(0, scatter.shape[0], chunk):
        part = slice(start, start + chunk)
        bound = root[part][:, rows] * root[part][:, cols] * (1 + rtol) + tiny
        bad = np.abs(scatter[part]) > bound
        if bad.any():
            p, k = np.argwhere(bad)[0]
            raise BankError(f"{who}: inconsistent statistics: scatter_ij^2 > scatter_ii * "
                            f"scatter_jj (Cauchy-Schwarz) at position {start + p}, channels "
                            f"({rows[k]}, {cols[k]})")
