"""PatchCore (Roth et al. 2022) on the detector contract (:mod:`fedad.detectors.base`).

Features arrive locally aware (3x3 averaged, levels at strides 8 and 16 fused: Sec. 3.1,
done by :mod:`fedad.features.extractor`). Each patch position of each training image is one
row of the memory bank.

Client: ``fit`` keeps a greedy coreset (Alg. 1) of ``upload_ratio`` of its patches; that
coreset and the client's patch count are its upload. Server: ``merge`` reduces the union of
the coresets to ``global_ratio`` of all clients' patches (greedy coreset, K-means centres or
the plain union). Scoring: a patch's score is its distance to the nearest bank feature
(Eq. 6); the image score is its largest patch score, optionally re-weighted (Eq. 7) at that
patch, as in the paper, patchcore-inspection and anomalib; the map (for pixel metrics) is
the patch scores upsampled and smoothed.

Every client and the server select in the same random projection (seed ``train.seed``) from
the same start rule (largest norm), so with one client ``merge`` returns exactly the
centralized ``global_ratio`` coreset: greedy k-center is prefix-consistent.

With ``privacy.epsilon > 0`` a client uploads ``privacy.centres`` DP-Lloyd centres of its
clipped patches in place of the coreset (a coreset is real patches, which no noise makes
private: :mod:`fedad.privacy.lloyd`), and a noisy patch count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedad.components.coreset import greedy_coreset
from fedad.components.kmeans import kmeans
from fedad.components.knn import NearestNeighbours, torch_knn
from fedad.components.maps import anomaly_maps
from fedad.components.rows import patch_rows, row_moments
from fedad.components.validate import check_array, check_bank, require_keys
from fedad.config.schema import RunConfig
from fedad.detectors.base import BANK, Detector, FeatureShape, FitInfo, Reads, Scores, Summary
from fedad.detectors.capabilities import NearestBank, PrivateRelease, StreamedFit
from fedad.errors import BankError, ConfigError
from fedad.features.stream import FeatureFile
from fedad.privacy.accountant import calibrated
from fedad.privacy.lloyd import private_centres, releases
from fedad.privacy.noise import generator, site_seed

COUNT = "count"
MERGES = ("coreset", "kmeans", "concat")
_SCORE_ROWS = 65_536  # test patches searched at once


def coreset_size(ratio: float, rows: int, bound: int | None = None) -> int:
    """``ceil(ratio * rows)`` clipped to ``[1, rows]`` (and to ``bound``); the product is
    rounded first so that e.g. ``0.07 * 100`` gives 7, not 8."""
    size = math.ceil(round(ratio * rows, 6))
    size = min(max(size, 1), rows)
    return min(size, bound) if bound is not None else size


class PatchCore(Detector, PrivateRelease, StreamedFit, NearestBank):
    """PatchCore with a federated memory bank: coresets up, one global coreset down
    (frozen features: nothing to train, its summary travels)."""

    name = "patchcore"
    iterative = False
    first_round = 1

    @classmethod
    def reads(cls, cfg: RunConfig) -> Reads:
        """``patchcore.strides`` (8/16), 3x3-averaged by ``patchcore.avg_pool``."""
        return Reads(tuple(int(s) for s in cfg.patchcore.strides), cfg.patchcore.avg_pool)

    def bank_rows(self, summary: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The global coreset ``(M, C)``."""
        return torch.from_numpy(np.ascontiguousarray(summary[BANK], dtype=np.float32))

    def __init__(self, cfg: RunConfig, shape: FeatureShape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        """``seed`` (a client's own seed) is kept but not used: coreset selection uses
        ``cfg.train.seed`` on every client and the server, which is what makes a one-client
        merge equal the centralized coreset."""
        pc = cfg.patchcore
        if pc.merge not in MERGES:
            raise ConfigError(f"patchcore.merge must be one of {', '.join(MERGES)}, got "
                              f"{pc.merge!r}")
        for key in ("upload_ratio", "global_ratio"):
            value = getattr(pc, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"patchcore.{key} must be in (0, 1], got {value}")
        if pc.max_upload_rows < 1:
            raise ConfigError(f"patchcore.max_upload_rows must be >= 1, got "
                              f"{pc.max_upload_rows}")
        if pc.reweight and pc.reweight_k < 2:
            raise ConfigError(f"patchcore.reweight_k must be >= 2, got {pc.reweight_k}")
        self.cfg = cfg
        self.shape = shape
        self.device = torch.device(device)
        self.seed = seed
        self.bank: torch.Tensor | None = None  # this client's coreset (M, C), float32
        self.count = 0  # patches it was selected from

    # -- helpers -------------------------------------------------------------------------------
    def _check_features(self, features: torch.Tensor) -> None:
        s = self.shape
        if features.ndim != 4 or tuple(features.shape[1:]) != (s.channels, s.height, s.width):
            raise ConfigError(f"patchcore: features of shape {tuple(features.shape)}, expected "
                              f"(N, {s.channels}, {s.height}, {s.width})")

    def patches(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` features as float32 patch rows ``(N*H*W, C)`` on the CPU."""
        self._check_features(features)
        return patch_rows(features)

    def select(self, rows: torch.Tensor, size: int) -> torch.Tensor:
        """Indices of the greedy coreset (Alg. 1) of ``rows``: the run's projection and seed."""
        pc = self.cfg.patchcore
        return greedy_coreset(rows, size, projection_dim=pc.projection_dim,
                              seed=self.cfg.train.seed)

    # -- client side -------------------------------------------------------------------------
    @classmethod
    def private_releases(cls, cfg: RunConfig) -> int:
        """Gaussian mechanisms one site's run releases with ``privacy.epsilon > 0``: the
        DP-Lloyd bank of its one upload."""
        return releases(cfg.privacy.lloyd_iterations)

    def private_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, P, C)``: the patches the private bank clips, image by image."""
        s = self.shape
        return self.patches(features).view(-1, s.positions, s.channels)

    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        """Keep a greedy coreset of ``upload_ratio`` of this client's patches; with
        ``privacy.epsilon > 0``, a private bank of DP-Lloyd centres instead."""
        t = time.perf_counter()
        pv = self.cfg.privacy
        if pv.epsilon > 0:
            budget = calibrated(pv, self.private_releases(self.cfg))
            s = self.shape
            self.bank, images = private_centres(
                self.private_rows(features), pv.centres, pv.clip,
                pv.lloyd_iterations, budget.noise_multiplier,
                generator(site_seed(pv.seed, self.seed)))
            self.count = max(int(round(images * s.positions)), self.bank.shape[0])
            return FitInfo(0.0, {"private bank": time.perf_counter() - t},
                           notes=budget.notes())
        rows = self.patches(features)
        pc = self.cfg.patchcore
        size = coreset_size(pc.upload_ratio, rows.shape[0], pc.max_upload_rows)
        self.bank = rows[self.select(rows, size)]
        self.count = int(rows.shape[0])
        return FitInfo(0.0, {"coreset": time.perf_counter() - t})

    def fit_stream(self, features: FeatureFile, global_summary: Summary | None,
                   round_t: int) -> FitInfo:
        """:meth:`fit` from features read ``backbone.stream_chunk`` images at a time, a
        merge-reduce coreset: each chunk keeps the greedy coreset (Alg. 1) of its share of
        the upload (chunk sizes chosen so the shares add up to :meth:`fit`'s
        ``ceil(upload_ratio * patches)``, within ``max_upload_rows``), and the upload is
        their union. With one chunk that is :meth:`fit`'s coreset exactly; with several,
        every patch lies as close to the union as to its own chunk's coreset (the same
        composition the server's merge makes of the sites' coresets). Memory holds one chunk
        and the upload; time grows linearly with the images, where one greedy coreset over
        all of them grows with their square."""
        t = time.perf_counter()
        self._check_features(features)
        pc = self.cfg.patchcore
        total = len(features) * self.shape.positions
        ratio = coreset_size(pc.upload_ratio, total, pc.max_upload_rows) / total

        def share(rows: int) -> int:  # the upload's rows due after ``rows`` patches
            return min(math.ceil(round(ratio * rows, 6)), rows)

        kept, seen = [], 0
        for chunk in features.chunks(self.cfg.backbone.stream_chunk):
            rows = self.patches(chunk)
            size = share(seen + rows.shape[0]) - share(seen)
            seen += rows.shape[0]
            if size > 0:
                kept.append(rows[self.select(rows, size)])
        self.bank = torch.cat(kept)
        self.count = seen
        return FitInfo(0.0, {"coreset": time.perf_counter() - t})

    def summarize(self, round_t: int) -> Summary:
        """``bank`` float32 ``(M, C)`` (the coreset) and ``count`` int64 ``(1,)`` (patches)."""
        if self.bank is None:
            raise BankError(f"patchcore: summarize before fit (round {round_t})")
        return {BANK: np.ascontiguousarray(self.bank.numpy(), dtype=np.float32),
                COUNT: np.array([self.count], dtype=np.int64)}

    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        """Nearest-bank-feature distance per patch (Eq. 6); image score = the largest raw
        patch distance, re-weighted by Eq. 7 at that patch with ``patchcore.reweight``;
        maps = patch distances upsampled and smoothed (pixel metrics only). Images are
        scored in batches of about ``65,536`` patches."""
        bank = torch.from_numpy(np.ascontiguousarray(global_summary[BANK], dtype=np.float32))
        nn = NearestNeighbours(bank)
        s = self.shape
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        maps, images = [torch.empty(0, *size)], [torch.empty(0)]
        step = max(1, _SCORE_ROWS // s.positions)
        for a in range(0, features.shape[0], step):
            rows = self.patches(features[a:a + step])
            n = rows.shape[0] // s.positions
            dist, near = nn.search(rows, 1)
            dist, near = dist[:, 0].view(n, s.positions), near[:, 0].view(n, s.positions)
            batch = anomaly_maps(dist.view(n, s.height, s.width), image_size,
                                 self.cfg.score.sigma)
            image = dist.amax(dim=1)  # the raw maximum, never the blurred map's
            if self.cfg.patchcore.reweight:
                image = image * self.reweight(rows.view(n, s.positions, -1), dist, near, bank,
                                              nn)
            maps.append(batch)
            images.append(image)
        return Scores(maps=torch.cat(maps), image=torch.cat(images))

    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`score` with gradients to ``features`` (``(N, C, H, W)``, any float dtype
        and device): the nearest bank rows by :func:`~fedad.components.knn.torch_knn` in
        place of faiss, the same Eq. 6-7 and maps; equal to :meth:`score` within float32
        rounding (``tests/test_differentiable.py``)."""
        self._check_features(features)
        s = self.shape
        bank = torch.from_numpy(np.ascontiguousarray(global_summary[BANK], dtype=np.float32))
        bank = bank.to(features.device)
        n = features.shape[0]
        rows = features.float().permute(0, 2, 3, 1).reshape(n, s.positions, s.channels)
        dist, near = torch_knn(rows.reshape(-1, s.channels), bank, 1)
        dist, near = dist[:, 0].view(n, s.positions), near[:, 0].view(n, s.positions)
        maps = anomaly_maps(dist.view(n, s.height, s.width), image_size, self.cfg.score.sigma)
        image = dist.amax(dim=1)
        if self.cfg.patchcore.reweight:
            image = image * self._reweight_torch(rows, dist, near, bank)
        return Scores(maps=maps, image=image)

    def _reweight_torch(self, rows: torch.Tensor, dist: torch.Tensor, near: torch.Tensor,
                        bank: torch.Tensor) -> torch.Tensor:
        """Eq. 7's weight as :meth:`reweight` computes it, differentiable in ``rows``."""
        k = min(self.cfg.patchcore.reweight_k, bank.shape[0])
        if k < 2:
            return rows.new_ones(rows.shape[0])
        pick = torch.arange(rows.shape[0], device=rows.device)
        worst = dist.detach().argmax(dim=1)
        test, star = rows[pick, worst], near[pick, worst]
        with torch.no_grad():
            _, support = torch_knn(bank[star], bank, k)
            missing = ~(support == star[:, None]).any(dim=1)
            # as reweight's masked assignment, written so an exported graph has no index_put
            support = torch.cat([support[:, :-1],
                                 torch.where(missing, star, support[:, -1])[:, None]], dim=1)
        dists = torch.linalg.vector_norm(bank[support] - test[:, None], dim=-1).double()
        own = (support == star[:, None]).double()
        return (1.0 - (torch.softmax(dists, dim=1) * own).sum(dim=1)).float()

    def reweight(self, rows: torch.Tensor, dist: torch.Tensor, near: torch.Tensor,
                 bank: torch.Tensor, nn: NearestNeighbours) -> torch.Tensor:
        """Eq. 7 weights ``(N,)`` of images with patches ``rows`` ``(N, HW, C)``, their
        nearest distances ``dist`` and bank indices ``near`` ``(N, HW)``: for the patch
        ``m_test`` of largest distance and its nearest bank feature ``m*``,
        ``1 - exp||m_test - m*|| / sum_m exp||m_test - m||`` over the ``reweight_k`` nearest
        bank features ``m`` of ``m*`` (``m*`` included). In ``[1 - 1/k, 1)``: near 1 when
        ``m*`` is a rare nominal feature (its neighbours are far from ``m_test``), lower where
        the bank is dense. A one-row bank has no neighbourhood: weight 1."""
        k = min(self.cfg.patchcore.reweight_k, bank.shape[0])
        if k < 2:
            return torch.ones(rows.shape[0])
        pick = torch.arange(rows.shape[0])
        worst = dist.argmax(dim=1)
        test, star = rows[pick, worst], near[pick, worst]  # (N, C), (N,)
        _, support = nn.search(bank[star], k)  # (N, k): neighbours of m*
        # m* belongs to its own neighbourhood; a duplicate of it may have displaced it
        missing = ~(support == star[:, None]).any(dim=1)
        support[missing, -1] = star[missing]
        dists = torch.linalg.vector_norm(bank[support] - test[:, None], dim=-1).double()
        own = (support == star[:, None]).double()  # one-hot: where m* sits in the support
        return (1.0 - (torch.softmax(dists, dim=1) * own).sum(dim=1)).float()

    def state(self) -> dict[str, torch.Tensor]:
        """Nothing: scoring needs only the global bank, and a frozen-feature detector has no
        later round (the client's coreset leaves with its upload)."""
        return {}

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        """Nothing to restore (see :meth:`state`)."""

    # -- server side ---------------------------------------------------------------------------
    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        """``bank``: 2-D finite floats with ``C`` columns and 1 to ``max_upload_rows`` rows;
        ``count``: one integer, at least the bank's rows."""
        require_keys(summary, (BANK, COUNT), who)
        c = self.shape.channels
        bound = self.cfg.patchcore.max_upload_rows
        bank = check_bank(summary[BANK], who, (None, c), key=BANK)
        if bank.shape[0] > bound:
            raise BankError(f"{who}: '{BANK}' has {bank.shape[0]} rows, more than the bound "
                            f"patchcore.max_upload_rows={bound}")
        count = check_array(summary[COUNT], who, COUNT, shape=(1,), kind="i")
        if int(count[0]) < bank.shape[0]:
            raise BankError(f"{who}: '{COUNT}' is {int(count[0])}, fewer patches than the "
                            f"{bank.shape[0]} bank rows")
        return {BANK: np.ascontiguousarray(bank.numpy()), COUNT: count.astype(np.int64)}

    def descriptor(self, summary: Summary) -> np.ndarray:
        """Mean and spread of the coreset's features (:func:`row_moments`)."""
        return row_moments(summary[BANK])

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        """The global bank: ``ceil(global_ratio * total patches)`` rows (within ``[1, union
        rows]``) by ``patchcore.merge``: greedy coreset of the union (Alg. 1), K-means
        centres of the union, or the union itself (``concat``)."""
        if not summaries:
            raise BankError("patchcore: no uploads to merge")
        union = np.concatenate([np.asarray(s[BANK], dtype=np.float32) for s in summaries])
        total = int(sum(int(np.asarray(s[COUNT]).reshape(-1)[0]) for s in summaries))
        pc = self.cfg.patchcore
        size = min(coreset_size(pc.global_ratio, max(total, 1)), union.shape[0])
        rows = torch.from_numpy(union)
        if pc.merge == "coreset":
            bank = rows[self.select(rows, size)]
        elif pc.merge == "kmeans":
            train = self.cfg.train
            bank = kmeans(rows, size, seed=train.seed, niter=train.kmeans_iters,
                          init="random")
        else:
            bank = rows
        return {BANK: np.ascontiguousarray(bank.numpy(), dtype=np.float32),
                COUNT: np.array([total], dtype=np.int64)}
