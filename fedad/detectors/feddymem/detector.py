"""FedDyMem on the detector contract (paper Alg. 3-5).

Client: round 0 builds the first reduced bank (Alg. 4); round ``t`` trains the head for
``feddymem.local_epochs`` epochs of the metric loss (Eq. 12) against the global bank, then
memory-reduces (Eq. 14-16) into the ``(H, W, C)`` bank it uploads (Alg. 5 ClientUpdate).
Server: K-means of the uploaded banks into ``K = H*W`` centres (Alg. 3), or the
position-wise average (``feddymem.aggregation=average``, Table III's ablation). The head's
weights and Adam state never leave the client; they are its ``state()``.

With a weight exchange (``local``, ``fedavg``, ``fedprox``, ``scaffold``, ``fedbn``: the
paper's baselines) the head's weights travel instead and each client keeps its own bank:
every round it memory-reduces its training memories with the current head (against its
previous bank), trains against that bank, and scores against a bank rebuilt the same way.

Beyond the paper (switches, off by default): ``feddymem.reduce=coreset|kmeans`` uploads a
*set* bank ``(k <= K, C)`` instead of the ``(H, W, C)`` map (:mod:`.set_reduce`), and
``feddymem.aggregation=coreset`` merges by a greedy coreset of the union.

With ``privacy.epsilon > 0`` (the summary exchange, the positional bank) every uploaded
bank is released with differential privacy: uniform weights in place of Eq. 15's, clipped
memory maps, Gaussian noise (:mod:`fedad.privacy.bank`); a run of rounds ``0..T`` is
``T + 1`` releases.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedad.components.coreset import greedy_coreset
from fedad.components.kmeans import kmeans
from fedad.components.rows import as_rows, row_moments
from fedad.components.training import OptimSpec, Part, TrainHooks
from fedad.components.validate import check_bank, require_keys
from fedad.config.schema import RunConfig
from fedad.detectors.base import BANK, Detector, FeatureShape, FitInfo, Scores, Summary
from fedad.detectors.capabilities import (
    Differentiable,
    PrivateRelease,
    RowMatrix,
    ShiftedRepresentation,
)
from fedad.detectors.feddymem.aggregate import aggregate
from fedad.detectors.feddymem.client import FedDyMemClient
from fedad.detectors.feddymem.set_reduce import SET_REDUCES
from fedad.errors import BankError, ConfigError
from fedad.privacy.accountant import calibrated
from fedad.privacy.noise import generator, site_seed

REDUCES = ("positional", *SET_REDUCES)
AGGREGATIONS = ("kmeans", "average", "coreset")


class FedDyMem(Detector, PrivateRelease, Differentiable, ShiftedRepresentation, RowMatrix):
    """The paper's detector: a trained head per client and a shared positional bank."""

    name = "feddymem"
    iterative = True
    first_round = 0  # round 0: the initial banks (Alg. 4)
    weights_label = "feddymem-head"  # a weight-exchange run's name: feddymem-head+fedavg
    batch_norm_hint = (" (head.batch_norm=true adds BatchNorm to FedDyMem's projection; "
                       "conf/method/fedbn.yaml sets it)")

    def __init__(self, cfg: RunConfig, shape: FeatureShape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.shape = shape
        self.device = torch.device(device)
        self.seed = seed
        self._client: FedDyMemClient | None = None  # built on first use (never on a server)
        if cfg.feddymem.reduce not in REDUCES:
            raise ConfigError(f"feddymem.reduce must be one of {', '.join(REDUCES)}, got "
                              f"{cfg.feddymem.reduce!r}")
        if cfg.feddymem.aggregation not in AGGREGATIONS:
            raise ConfigError(f"feddymem.aggregation must be one of {', '.join(AGGREGATIONS)}, "
                              f"got {cfg.feddymem.aggregation!r}")
        if cfg.feddymem.aggregation == "average" and cfg.feddymem.reduce != "positional":
            raise ConfigError(f"feddymem.aggregation=average averages positions; a set bank "
                              f"(feddymem.reduce={cfg.feddymem.reduce}) has none")
        mem = cfg.feddymem
        weights = {"anchor": mem.anchor, "repulsion": mem.repulsion,
                   "threshold_scale": mem.threshold_scale}
        negative = [f"feddymem.{k} = {v}" for k, v in weights.items() if v < 0]
        if negative:
            raise ConfigError(f"{', '.join(negative)}: must be >= 0 (0: off)")
        self.bank: torch.Tensor | None = None
        # a weight exchange: the client's own bank is kept (state) and rounds counted
        self.own_bank: torch.Tensor | None = None
        self.own_rounds = 0
        self.budget = None  # privacy.epsilon > 0: what the uploads spend (fedad.privacy)

    @property
    def client(self) -> FedDyMemClient:
        """The head, its optimiser and shuffling state (seeded by ``seed``)."""
        if self._client is None:
            self._client = FedDyMemClient(self.shape.channels, self.cfg.head, self.cfg.train,
                                          self.device, seed=self.seed,
                                          memory=self.cfg.feddymem)
        return self._client

    @property
    def positional(self) -> bool:
        """The paper's ``(H, W, C)`` bank (``feddymem.reduce=positional``), else a set bank."""
        return self.cfg.feddymem.reduce == "positional"

    @property
    def fixed_target(self) -> bool:
        """``feddymem.target=initial``: the first bank is kept for training and scoring."""
        return self.cfg.feddymem.target == "initial"

    @property
    def bank_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` (paper) or ``(K, C)`` for a set bank (``K = feddymem.bank_size``,
        default ``H*W``: the same upload size)."""
        if self.positional:
            return self.shape.height, self.shape.width, self.shape.channels
        k = self.cfg.feddymem.bank_size or self.shape.height * self.shape.width
        return k, self.shape.channels

    @classmethod
    def private_releases(cls, cfg: RunConfig) -> int:
        """Gaussian mechanisms one site's run releases with ``privacy.epsilon > 0``: a bank
        in every round ``0..train.rounds`` (all of them, whether or not the site is drawn).

        Raises:
            ConfigError: a set bank (``feddymem.reduce`` other than positional).
        """
        if cfg.feddymem.reduce != "positional":
            raise ConfigError("privacy.epsilon > 0 needs feddymem.reduce=positional (the "
                              f"private bank is the mean map), got {cfg.feddymem.reduce!r}")
        return cfg.train.rounds + 1

    def private_rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H*W*C)``: each image's whole memory map, the row the private bank
        clips (:func:`~fedad.privacy.bank.private_mean_map`)."""
        maps = list(self.client.memories(features))
        if not maps:
            return torch.zeros(0, 1, int(np.prod(self.bank_shape)))
        return torch.cat(maps).reshape(len(features), 1, -1)

    # -- the trained head (weight exchanges) -------------------------------------------------
    @classmethod
    def parts(cls, cfg: RunConfig) -> dict[str, Part]:
        """One part, the head (projection + memory generator), trained by
        ``train.optimizer`` at ``train.lr`` (the paper's Adam at 1e-3)."""
        return {"head": Part("", OptimSpec(cfg.train.optimizer, cfg.train.lr))}

    def representation(self) -> torch.nn.Module:
        """The projection (the part whose output FedPHP and DBE compare)."""
        return self.client.head.representation

    def representation_shift(self) -> torch.Tensor:
        return self.client.head.shift

    def set_representation_shift(self, shift: torch.Tensor) -> None:
        self.client.head.shift = shift

    @classmethod
    def shift_key(cls) -> str:
        return "shift"

    @classmethod
    def row_matrix(cls, cfg: RunConfig) -> str:
        """The projection's 1x1 convolution: row ``j`` is input channel ``j``'s weights."""
        return "projection.conv.weight"

    def _reduce(self, features: torch.Tensor, previous: torch.Tensor | None,
                round_t: int) -> torch.Tensor:
        pv = self.cfg.privacy
        if pv.epsilon > 0:
            self.budget = calibrated(pv, self.private_releases(self.cfg))
            return self.client.reduce_private(
                features, previous, round_t, pv.clip, self.budget.noise_multiplier,
                generator(site_seed(pv.seed, self.seed, round_t)))
        if self.positional:
            return self.client.reduce(features, previous, round_t)
        return self.client.reduce_set(features, previous, round_t, self.bank_shape[0],
                                      seed=self.seed + round_t)

    # -- client side -------------------------------------------------------------------------
    def module(self) -> torch.nn.Module:
        """The head (projection + memory generator): what a weight exchange moves."""
        return self.client.head

    def own_summary(self, features: torch.Tensor) -> Summary:
        """The client's own bank rebuilt from its training memories with the current head."""
        bank = self._reduce(features, self.own_bank, self.own_rounds)
        return {BANK: np.ascontiguousarray(bank.cpu().numpy())}

    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int, hooks: TrainHooks | None = None) -> FitInfo:
        """Round 0: the first reduced bank (Alg. 4 lines 4-8). Round t: E epochs of the
        metric loss against ``M^{t-1}``, then memory-reduce (Alg. 5). No global bank after
        round 0 (a weight exchange): reduce into the client's own bank with the current
        head, then train against it with the exchange's ``hooks``."""
        t = time.perf_counter()
        if global_summary is None and round_t > 0:
            if self.own_bank is None or not self.fixed_target:
                self.own_bank = self._reduce(features, self.own_bank, self.own_rounds)
            sec_reduce = time.perf_counter() - t
            t = time.perf_counter()
            self.client.use_optimizer(self.optim_spec("head", hooks))
            losses = self.client.train_epochs(features, self.own_bank, hooks=hooks)
            self.own_rounds += 1
            return FitInfo(losses[-1] if losses else 0.0,
                           {"train": time.perf_counter() - t, "reduce": sec_reduce},
                           steps=self.client.last_steps)
        if round_t == 0 or global_summary is None:
            self.bank = self._reduce(features, None, 0)
            return FitInfo(0.0, {"train": 0.0, "reduce": time.perf_counter() - t},
                           notes=self._budget_notes())
        previous = self.global_bank(global_summary)
        losses = self.client.train_epochs(features, previous)
        sec_train = time.perf_counter() - t
        t = time.perf_counter()
        # feddymem.target=initial: the round-0 global bank stays the bank (CFA's reading)
        self.bank = (previous if self.fixed_target
                     else self._reduce(features, previous, round_t))
        return FitInfo(losses[-1] if losses else 0.0,
                       {"train": sec_train, "reduce": time.perf_counter() - t},
                       notes=self._budget_notes())

    def _budget_notes(self) -> dict[str, float] | None:
        """What the private uploads spend over the run (``None``: no privacy)."""
        return None if self.budget is None else self.budget.notes()

    def summarize(self, round_t: int) -> Summary:
        if self.bank is None:
            raise BankError(f"feddymem: summarize before fit (round {round_t})")
        return {BANK: np.ascontiguousarray(self.bank.detach().cpu().to(torch.float32).numpy())}

    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        """Nearest global-bank features of each memory feature (the client's own head)."""
        return self.client.score(features, self.global_bank(global_summary), image_size,
                                 self.cfg.score)

    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`score` with gradients through the head to ``features`` (what a refinement
        such as F2PAD optimises against)."""
        return self.client.score_features(features, self.global_bank(global_summary),
                                          image_size, self.cfg.score)

    def state(self) -> dict[str, torch.Tensor]:
        out = self.client.to_arrays()
        if self.own_bank is not None:
            out["own.bank"] = self.own_bank.clone()
            out["own.rounds"] = torch.tensor(self.own_rounds)
        return out

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        if arrays:
            self.client.load_arrays({k: v for k, v in arrays.items()
                                     if not k.startswith("own.")})
        self.own_bank = arrays.get("own.bank")
        self.own_rounds = int(arrays.get("own.rounds", torch.tensor(0)))

    # -- server side ---------------------------------------------------------------------------
    def global_bank(self, summary: Mapping[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(summary[BANK], dtype=np.float32))

    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        """One finite float bank of :attr:`bank_shape`."""
        require_keys(summary, (BANK,), who)
        if self.positional:
            bank = check_bank(summary[BANK], who, self.bank_shape)
        else:  # (k, C), 1 <= k <= K (a small client uploads all it has)
            k_max, c = self.bank_shape
            bank = check_bank(summary[BANK], who, (None, c))
            if bank.shape[0] > k_max:
                raise BankError(f"{who}: '{BANK}' has {bank.shape[0]} rows, expected at most "
                                f"{k_max}")
        return {BANK: np.ascontiguousarray(bank.numpy())}

    def descriptor(self, summary: Summary) -> np.ndarray:
        """Mean and spread of the bank's features (:func:`row_moments`)."""
        return row_moments(summary[BANK])

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        """Alg. 3: K-means of the ``N*H*W`` uploaded features into ``H*W`` centres (set
        banks: ``N*K`` into ``K``, seeded k-means++ since positions mean nothing there);
        ``average`` (Table III's ablation) or ``coreset`` (greedy coreset of the union,
        beyond the paper) by ``feddymem.aggregation``. With ``feddymem.target=initial``
        every round after the first returns the bank the sites kept (their median)."""
        banks = [torch.from_numpy(np.asarray(s[BANK], dtype=np.float32)) for s in summaries]
        train, mem = self.cfg.train, self.cfg.feddymem
        if self.fixed_target and round_t > 0 and len({b.shape for b in banks}) == 1:
            # every site uploads the kept global bank unchanged: the element-wise median
            # returns it exactly, and no minority of sites can move it
            return {BANK: np.ascontiguousarray(torch.stack(banks).median(0).values.numpy())}
        seed = train.seed + round_t
        rows = torch.cat([as_rows(b) for b in banks])
        size = min(int(np.prod(self.bank_shape[:-1])), rows.shape[0])  # set banks: <= K
        if mem.aggregation == "coreset":
            shape = self.bank_shape if self.positional else (size, rows.shape[1])
            bank = rows[greedy_coreset(rows, size, seed=seed)].reshape(shape)
        elif self.positional:
            bank = aggregate(banks, mem.aggregation, seed=seed, niter=train.kmeans_iters,
                             init=mem.kmeans_init)
        else:  # kmeans of a set bank (__init__ refused average)
            bank = kmeans(rows, size, seed=seed, niter=train.kmeans_iters, init="kmeans++")
        return {BANK: np.ascontiguousarray(bank.numpy())}
