"""What one FedDyMem client computes, with no Flower: initial bank (Alg. 4), a training
round (Alg. 5 ``ClientUpdate``: E epochs of the metric loss, then memory-reduce) and
scoring a test set against a global bank.

Everything runs on precomputed frozen features ``(N, C, H, W)`` (see
:mod:`fedad.features.cache`), so the backbone is never re-run across epochs or rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from fedad.components.knn import NearestNeighbours, torch_knn
from fedad.components.maps import anomaly_maps, image_scores, patch_scores
from fedad.components.optimizer_state import load_optimizer_arrays, optimizer_arrays
from fedad.components.rows import as_rows
from fedad.components.training import OptimSpec, TrainHooks, build_optimizer, step
from fedad.config.schema import ScoreConfig, TrainConfig
from fedad.detectors.base import Scores
from fedad.detectors.feddymem.config import FedDyMemConfig, HeadConfig
from fedad.detectors.feddymem.head import FedDyMemHead
from fedad.detectors.feddymem.loss import (
    anchor_loss,
    bank_spacing,
    metric_loss,
    positions,
    repulsive_loss,
)
from fedad.detectors.feddymem.reduce import MemoryReducer
from fedad.detectors.feddymem.set_reduce import set_reduce
from fedad.errors import ConfigError
from fedad.privacy.bank import private_mean_map


class FedDyMemClient:
    """One client's head, optimiser and the computations of a FedDyMem round.

    The head's weights never leave the client; only banks ``(H, W, C)`` do.
    """

    def __init__(self, channels: int, head: HeadConfig | None = None,
                 train: TrainConfig | None = None, device: torch.device | str = "cpu",
                 seed: int = 0, memory: FedDyMemConfig | None = None) -> None:
        self.head_cfg = head or HeadConfig()
        self.train_cfg = train or TrainConfig()
        self.mem_cfg = memory or FedDyMemConfig()
        self.device = torch.device(device)
        # the head is drawn from its own seed inside a forked RNG: clients that share a
        # process (a Ray actor) neither reseed nor advance each other's global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = FedDyMemHead(channels, self.head_cfg).to(self.device)
        # feddymem.anchor: the head as drawn (the same draw whenever the site rebuilds it
        # from its seed), frozen, for Eq. 12's added pull toward the start
        self.start: FedDyMemHead | None = None
        if self.mem_cfg.anchor > 0:
            self.start = copy.deepcopy(self.head).eval().requires_grad_(False)
        self.spec = OptimSpec(self.train_cfg.optimizer, self.train_cfg.lr)
        self.optimizer = (build_optimizer(self.head.parameters(), self.spec)
                          if self.head.trainable else None)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.last_steps = 0

    # -- memory features ---------------------------------------------------------------
    @torch.no_grad()
    def memories(self, features: torch.Tensor, batch_size: int | None = None
                 ) -> Iterator[torch.Tensor]:
        """Memory features ``M^i`` as ``(B, H, W, C)`` batches, head in eval mode (Alg. 1)."""
        self.head.eval()
        bs = batch_size or self.train_cfg.batch_size
        for start in range(0, features.shape[0], bs):
            x = features[start:start + bs].to(self.device, torch.float32)
            yield self.head(x).permute(0, 2, 3, 1).cpu()

    def reduce(self, features: torch.Tensor, previous: torch.Tensor | None,
               round_t: int) -> torch.Tensor:
        """Memory-reduce of all training memories (Alg. 2) -> ``(H, W, C)`` bank."""
        reducer = MemoryReducer(previous, round_t)
        for batch in self.memories(features):
            reducer.update(batch)
        return reducer.result()

    def reduce_private(self, features: torch.Tensor, previous: torch.Tensor | None,
                       round_t: int, clip: float, noise_multiplier: float,
                       gen: torch.Generator) -> torch.Tensor:
        """Memory-reduce released with differential privacy
        (:func:`~fedad.privacy.bank.private_mean_map`: uniform weights, clipped maps,
        noise), then Eq. 16's EMA with ``previous`` when ``round_t > 0``."""
        mean = private_mean_map(self.memories(features), clip, noise_multiplier, gen)
        if round_t > 0 and previous is not None:
            alpha = 1.0 / (round_t + 1)
            mean = alpha * mean + (1.0 - alpha) * previous.to(mean)
        return mean

    def initial_bank(self, features: torch.Tensor) -> torch.Tensor:
        """Alg. 4 lines 4-8: the round-0 reduced bank (weights all 1, no EMA)."""
        return self.reduce(features, None, 0)

    def reduce_set(self, features: torch.Tensor, previous: torch.Tensor | None,
                   round_t: int, size: int, seed: int = 0) -> torch.Tensor:
        """Memory-reduce as a set (``feddymem.reduce=coreset|kmeans``) -> ``(size, C)``."""
        mem = self.mem_cfg
        return set_reduce(self.memories(features), size, mem.reduce, previous, round_t,
                          rema=mem.rema, seed=seed, niter=self.train_cfg.kmeans_iters)

    # -- training ------------------------------------------------------------------------
    def use_optimizer(self, spec: OptimSpec) -> None:
        """Train with ``spec`` from now on (a weight exchange's rule, e.g. SCAFFOLD's plain
        SGD): a different optimiser starts fresh, the same one keeps its moments."""
        if self.optimizer is not None and spec != self.spec:
            self.spec = spec
            self.optimizer = build_optimizer(self.head.parameters(), spec)

    def train_epochs(self, features: torch.Tensor, bank: torch.Tensor,
                     epochs: int | None = None, hooks: TrainHooks | None = None,
                     ) -> list[float]:
        """E epochs of the optimiser on the metric loss (Eq. 12) against ``bank``; mean loss
        per epoch (Eq. 12 plus the switched-on terms beyond the paper: repulsion, anchor;
        not an exchange's own terms). A head with nothing to train (both ablation switches
        off) is skipped.

        ``hooks`` are a weight exchange's changes to each step (FedProx's proximal term,
        SCAFFOLD's correction). The number of optimiser steps is left in
        ``self.last_steps``."""
        epochs = self.train_cfg.local_epochs if epochs is None else epochs
        if self.optimizer is None or epochs <= 0:
            return []
        cfg = self.mem_cfg
        k, th, bs = cfg.top_k, cfg.threshold, self.train_cfg.batch_size
        index = NearestNeighbours(bank)
        bank_feats = as_rows(bank).to(self.device, torch.float32)
        j = cfg.repulsion_j if cfg.repulsion > 0 else 0
        if k + j > index.size:
            raise ConfigError(f"feddymem.top_k + feddymem.repulsion_j = {k + j} exceeds the "
                              f"bank size {index.size}")
        spacing = bank_spacing(bank) if j or cfg.threshold_scale > 0 else 0.0
        margin = cfg.repulsion_margin * spacing
        if cfg.threshold_scale > 0:
            th = cfg.threshold_scale * spacing
        squared = cfg.distance == "squared"
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in self.head.modules())
        losses = []
        self.last_steps = 0
        for _ in range(epochs):
            self.head.train()
            order = torch.randperm(features.shape[0], generator=self.shuffle)
            total, n = 0.0, 0
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                if len(idx) < 2 and has_bn:
                    continue  # BatchNorm cannot train on a single image
                x = features[idx].to(self.device, torch.float32)
                feats = positions(self.head(x))
                _, nn_idx = index.search(feats.detach(), k + j)
                nn_idx = nn_idx.to(self.device)
                loss = metric_loss(feats, bank_feats, nn_idx[:, :k], th, squared)
                if j:
                    loss = loss + cfg.repulsion * repulsive_loss(
                        feats, bank_feats, nn_idx[:, k:], margin, squared)
                if self.start is not None:
                    with torch.no_grad():
                        start = positions(self.start(x))
                    loss = loss + cfg.anchor * anchor_loss(feats, start)
                step(self.head, self.optimizer, loss, hooks)
                self.last_steps += 1
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            losses.append(total / max(n, 1))
        return losses

    def train_round(self, features: torch.Tensor, bank: torch.Tensor, round_t: int
                    ) -> tuple[torch.Tensor, list[float]]:
        """Alg. 5 ``ClientUpdate``: train against the global bank ``M^{t-1}``, then reduce."""
        losses = self.train_epochs(features, bank)
        return self.reduce(features, bank, round_t), losses

    # -- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, features: torch.Tensor, bank: torch.Tensor, image_size: int,
              cfg: ScoreConfig | None = None) -> Scores:
        """Anomaly maps and image scores of test features against ``bank``."""
        cfg = cfg or ScoreConfig()
        index = NearestNeighbours(bank)
        maps, scores = [], []
        for mem in self.memories(features):
            b, h, w, c = mem.shape
            dist, _ = index.search(mem.reshape(-1, c), cfg.top_k)
            patch = patch_scores(dist, cfg.mode).reshape(b, h, w)
            m = anomaly_maps(patch, image_size, cfg.sigma)
            maps.append(m)
            scores.append(image_scores(m))
        return Scores(maps=torch.cat(maps), image=torch.cat(scores))

    def score_features(self, features: torch.Tensor, bank: torch.Tensor, image_size: int,
                       cfg: ScoreConfig | None = None) -> Scores:
        """:meth:`score` with gradients to ``features`` (through the head, in eval mode):
        :func:`~fedad.components.knn.torch_knn` in place of faiss, the same patch scores
        and maps; equal to :meth:`score` within float32 rounding."""
        cfg = cfg or ScoreConfig()
        self.head.eval()
        mem = self.head(features.to(self.device, torch.float32)).permute(0, 2, 3, 1)
        b, h, w, c = mem.shape
        dist, _ = torch_knn(mem.reshape(-1, c), bank.to(mem.device), cfg.top_k)
        patch = patch_scores(dist, cfg.mode).reshape(b, h, w)
        maps = anomaly_maps(patch, image_size, cfg.sigma)
        return Scores(maps=maps, image=image_scores(maps))

    # -- state kept between rounds ---------------------------------------------------------
    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "shuffle": self.shuffle.get_state()}

    def to_arrays(self) -> dict[str, torch.Tensor]:
        """Everything kept between rounds as a flat ``{name: tensor}`` dict (head weights,
        Adam moments, shuffling state), e.g. for Flower's ``context.state``."""
        out = {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        if self.optimizer is not None:
            out.update(optimizer_arrays(self.optimizer))
        out["shuffle"] = self.shuffle.get_state()
        return out

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`to_arrays` saved."""
        head = {k[5:]: v for k, v in arrays.items() if k.startswith("head.")}
        self.head.load_state_dict(head)
        if self.optimizer is not None:
            load_optimizer_arrays(self.optimizer, arrays)
        if "shuffle" in arrays:
            self.shuffle.set_state(arrays["shuffle"].to(torch.uint8))

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("shuffle") is not None:
            self.shuffle.set_state(state["shuffle"])

