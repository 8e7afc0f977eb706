"""anomalib's image models as fedad detectors (``detector=anomalib``; the ``anomalib`` extra).

``detector=anomalib sections.anomalib.model=<m>`` resolves to the member
``anomalib-<m>`` (:class:`Anomalib` is a :class:`~fedad.detectors.capabilities.Family`),
which declares what its state lets travel:

* a **trained** model (STFPM, DRAEM, FRE; :class:`Trained`) is ``Budgeted``: a site
  calls anomalib's own ``training_step`` on batches of its normalised pixels and steps the
  optimiser of anomalib's own ``configure_optimizers`` (SCAFFOLD's plain SGD replaces it,
  as for every fedad detector), ``train.local_steps`` steps a round; the part anomalib
  trains (STFPM's student, FRE's autoencoder, all of DRAEM) is what the weight exchanges
  move;
* **PaDiM** (:class:`Padim`) fits a Gaussian per position to anomalib's own embeddings;
  what travels is their statistics (count, mean, scatter), merged exactly by fedad's
  shared :mod:`fedad.components.gaussian`; a site then scores with anomalib's own anomaly
  map against the Gaussians of every site's images together;
* **PatchCore** (:class:`Patchcore`) keeps anomalib's coreset (its ``KCenterGreedy``) of
  its own embeddings; the global bank is the union of the sites' coresets, each at
  anomalib's ``coreset_sampling_ratio`` (so as large as a centralized coreset at the same
  ratio), scored by anomalib's own nearest-neighbour score.

Every model is built with fedad's offline backbone weights
(:mod:`fedad.detectors.anomalib.offline`) and scores with its own anomaly map and image
score (anomalib's ``InferenceBatch``), mapped to :class:`~fedad.detectors.base.Scores`.
"""

from __future__ import annotations

import importlib
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from fedad.components.budget import Stage
from fedad.components.gaussian import (
    combine_statistics,
    gaussian,
    inverse_covariance,
    pack_upper,
    packed_size,
    position_statistics,
)
from fedad.components.optimizer_state import load_optimizer_arrays, optimizer_arrays
from fedad.components.training import OptimSpec, Part, TrainHooks, build_optimizer, step
from fedad.components.validate import check_array, require_keys
from fedad.config.sections import section
from fedad.detectors.anomalib.config import AnomalibConfig
from fedad.detectors.anomalib.models import MODELS, STEPS, ModelSpec, spec_of
from fedad.detectors.anomalib.offline import feature_info, offline_backbones, timm_modules
from fedad.detectors.base import BANK, Detector, FitInfo, Reads, Scores, Summary
from fedad.detectors.capabilities import Budgeted, Family, Summarizes, TorchScore
from fedad.errors import BankError, ConfigError

SECTION = "anomalib"
EXTRA = 'pip install -e ".[anomalib]"'
BATCH = 16  # images per forward pass when fitting statistics or scoring


def import_anomalib() -> None:
    """Raises :class:`ConfigError` saying how to install the extra when anomalib is
    missing."""
    try:
        importlib.import_module("anomalib")
    except ImportError as exc:
        raise ConfigError(f"detector=anomalib needs the anomalib extra ({EXTRA}): {exc}") \
            from exc


def own(cfg: Any) -> AnomalibConfig:
    return section(cfg, SECTION, AnomalibConfig)


class Anomalib(Detector, Family):
    """``detector=anomalib``: the family of anomalib's models; the run's
    ``sections.anomalib.model`` chooses the member ``anomalib-<model>`` (never built
    itself)."""

    name = "anomalib"
    iterative = False
    sections = {SECTION: AnomalibConfig}

    @classmethod
    def member(cls, cfg: Any) -> str:
        model = own(cfg).model
        spec_of(model)  # refused or unknown: says why
        return f"anomalib-{model}"


class AnomalibModel(Detector):
    """What every member shares: its anomalib model, built offline on the site's device;
    the images it is given are fedad's pixels, normalised for ``backbone.name``."""

    inputs = "images"
    sections = {SECTION: AnomalibConfig}
    model_name: ClassVar[str]

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        mine = own(cfg)
        spec_of(mine.model)
        if mine.model != cls.model_name:
            raise ConfigError(f"detector={cls.name} runs anomalib's {cls.model_name}, but "
                              f"sections.anomalib.model={mine.model}: use detector=anomalib")
        if mine.steps < 0 or mine.batch_size < 0:
            raise ConfigError(f"sections.anomalib: steps={mine.steps} and batch_size="
                              f"{mine.batch_size} must be >= 0")
        import_anomalib()

    @classmethod
    def defaults(cls, cfg: Any) -> dict[str, Any]:
        """Init arguments fedad sets for this model (the run's ``init`` wins): the backbone
        and the timm modules of the levels it reads (:meth:`reads`: fedad's PaDiM and
        PatchCore's strides for anomalib's, so both see the same features; else
        ``backbone.layers``)."""
        from fedad.detectors.registry import feature_config

        layers = feature_config(cfg).backbone.layers
        return {"backbone": cfg.backbone.name,
                "layers": timm_modules(cfg.backbone.name, layers)}

    def __init__(self, cfg: Any, shape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        self.cfg, self.shape, self.device = cfg, shape, torch.device(device)
        self.spec: ModelSpec = MODELS[self.model_name]
        import_anomalib()
        module, name = self.spec.cls.split(":")
        kwargs = {"pre_processor": False, "post_processor": False, "evaluator": False,
                  "visualizer": False, **self.defaults(cfg), **own(cfg).init}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with offline_backbones(cfg.backbone):
                try:
                    self.lm = vars(importlib.import_module(module))[name](**kwargs)
                except TypeError as exc:  # an init argument the model does not take
                    raise ConfigError(f"sections.anomalib.init: anomalib's {name} refused "
                                      f"{sorted(own(cfg).init)}: {exc}") from exc
        self.lm.model.to(self.device)
        self._scoring: bytes | None = None  # the summary's key in the model

    def module(self) -> torch.nn.Module:
        return self.lm.model

    @torch.no_grad()
    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        """anomalib's own anomaly map (upsampled to ``image_size`` when it is not) and
        image score of every image, :data:`BATCH` images at a time."""
        self.prepare_scoring(global_summary)
        parts = [self.forward(x, image_size) for x in self.batches(features)]
        return Scores(maps=torch.cat([p.maps.cpu() for p in parts]),
                      image=torch.cat([p.image.cpu() for p in parts]))

    def score_features(self, features: torch.Tensor, global_summary: Summary,
                       image_size: int) -> Scores:
        """:meth:`score` of one batch of normalised pixels, torch operations only (the
        path ``fedad-export`` traces, for the members that declare
        :class:`~fedad.detectors.capabilities.TorchScore`). No gradients reach the pixels
        (anomalib runs its frozen extractors under ``no_grad``), so no member declares
        ``Differentiable``: no F2PAD on them."""
        self.prepare_scoring(global_summary)
        return self.forward(features.float(), image_size)

    def forward(self, images: torch.Tensor, image_size: int) -> Scores:
        """anomalib's forward in evaluation mode, its map at ``image_size``."""
        out = self.lm.model.eval()(images)
        amap = out.anomaly_map.float()
        if amap.ndim == 3:
            amap = amap[:, None]
        if amap.shape[-1] != image_size or amap.shape[-2] != image_size:
            amap = F.interpolate(amap, size=(image_size, image_size), mode="bilinear",
                                 align_corners=False)
        return Scores(maps=amap[:, 0], image=out.pred_score.float().reshape(-1))

    def scoring_network(self) -> torch.nn.Module:
        """anomalib's whole model (its backbone, and the Gaussians or bank once scored)."""
        return self.lm.model

    def prepare_scoring(self, global_summary: Summary) -> None:
        """Put what the global summary says into anomalib's model (:meth:`set_summary`),
        once per global summary: an export then holds it as the model's buffers."""
        from fedad.detectors.base import summary_fingerprint

        key = summary_fingerprint(global_summary)
        if key != self._scoring:
            self.set_summary(global_summary)
            self._scoring = key

    def set_summary(self, global_summary: Summary) -> None:
        """Put the global summary into anomalib's model (nothing by default)."""

    def batches(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """``images`` :data:`BATCH` at a time, float32 on the model's device."""
        for start in range(0, len(images), BATCH):
            yield images[start:start + BATCH].to(self.device, torch.float32)


# -- trained networks: their weights travel ---------------------------------------------------


class Trained(AnomalibModel, Budgeted):
    """A trained anomalib model federated by its weights (every weight exchange whose
    capabilities it meets); the steps are its ``sections.anomalib.steps`` (0: the budget
    preset's, :data:`~fedad.detectors.anomalib.models.STEPS`)."""

    iterative = True
    schedule: ClassVar[str] = "constant"  # anomalib's own: no decay

    @classmethod
    def parts(cls, cfg: Any) -> dict[str, Part]:
        spec = MODELS[cls.model_name]
        return {"model": Part(spec.part, spec.optim)}

    @classmethod
    def stages(cls, cfg: Any) -> list[Stage]:
        steps = own(cfg).steps or STEPS.get(cfg.budget, STEPS["cpu"])[cls.model_name]
        return [Stage("model", int(steps))]

    @classmethod
    def presets(cls) -> dict[str, dict[str, object]]:
        # no warm-up and anomalib's own schedule; paper: anomalib's 256-px images
        base = {"train.schedule": cls.schedule, "train.warmup": 0.0}
        return {"cpu": {**base, "train.local_steps": 25},
                "paper": {**base, "train.local_steps": 100, "dataset.image_size": 256}}

    def __init__(self, cfg: Any, shape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(cfg, shape, device, seed)
        self.seed = seed
        self.optimizer: torch.optim.Optimizer | None = None
        self.in_use: OptimSpec | None = None
        self._optim_state: dict[str, torch.Tensor] = {}

    def _params(self) -> list[torch.nn.Parameter]:
        prefix = self.spec.part
        return [p for n, p in self.lm.model.named_parameters() if n.startswith(prefix)]

    def _optimizer(self, spec: OptimSpec) -> torch.optim.Optimizer:
        """anomalib's own optimiser, or the exchange's when it replaces it (SCAFFOLD)."""
        if spec == self.spec.optim:
            made = self.lm.configure_optimizers()
            while isinstance(made, (list, tuple)):  # ([optimizers], [schedulers])
                made = made[0]
            if isinstance(made, dict):
                made = made["optimizer"]
            return made
        return build_optimizer(self._params(), spec)

    def fit(self, features: torch.Tensor, global_summary: Summary | None, round_t: int,
            hooks: TrainHooks | None = None) -> FitInfo:
        from anomalib.data import ImageBatch

        rp = self.round_plan(round_t)
        spec = self.optim_spec("model", hooks)
        if self.optimizer is None or spec != self.in_use:
            self.optimizer, self.in_use = self._optimizer(spec), spec
            if self._optim_state:
                load_optimizer_arrays(self.optimizer, self._optim_state)
                self._optim_state = {}
        sched = self.scheduled(self.optimizer, spec, rp)
        batch = own(self.cfg).batch_size or self.cfg.train.batch_size
        gen = torch.Generator().manual_seed(self.seed * 100_003 + round_t)
        self.lm.train()
        module, loss = self.lm.model, torch.zeros(())
        for i in range(rp.steps):
            sched.at(rp.first + i)
            idx = torch.randint(0, len(features), (batch,), generator=gen)  # with replacement
            x = features[idx].to(self.device, torch.float32)
            with warnings.catch_warnings():  # its self.log() outside a Trainer: a no-op
                warnings.filterwarnings("ignore", message=r".*self\.trainer. reference is not")
                out = self.lm.training_step(ImageBatch(image=x), i)
            loss = out["loss"] if isinstance(out, Mapping) else out
            step(module, self.optimizer, loss, hooks)
        return FitInfo(float(loss.detach()), steps=rp.steps)

    def own_summary(self, features: torch.Tensor) -> Summary:
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v.detach().cpu().clone()
               for k, v in self.lm.model.state_dict().items()}
        if self.optimizer is not None:
            out.update(optimizer_arrays(self.optimizer))
        return out

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        if not arrays:
            return
        self.lm.model.load_state_dict({k[4:]: v for k, v in arrays.items()
                                       if k.startswith("net.")})
        self._optim_state = {k: v for k, v in arrays.items() if k.startswith("optim.")}
        self.optimizer = None


class Stfpm(Trained, TorchScore):
    name = "anomalib-stfpm"
    model_name = "stfpm"
    weights_label = "anomalib-stfpm"
    batch_norm_hint = "STFPM's student is the backbone's (BatchNorm per its timm model)"


class Draem(Trained, TorchScore):
    name = "anomalib-draem"
    model_name = "draem"
    weights_label = "anomalib-draem"
    schedule = "step"  # DRAEM's MultiStepLR (x0.1 late in training; fedad's: at 80%, 90%)

    @classmethod
    def defaults(cls, cfg: Any) -> dict[str, Any]:
        # no DTD download: an empty folder gives anomalib's Perlin-noise anomalies
        empty = Path(tempfile.gettempdir()) / "fedad-anomalib-no-dtd"
        empty.mkdir(exist_ok=True)
        return {"dtd_dir": str(empty)}


class Fre(Trained):
    """anomalib's FRE; not exported (no :class:`TorchScore`): its ``get_features``
    reshapes by ``len(batch)``, which the tracing exporter freezes at the traced batch."""

    name = "anomalib-fre"
    model_name = "fre"
    weights_label = "anomalib-fre"

    @classmethod
    def defaults(cls, cfg: Any) -> dict[str, Any]:
        """One layer (the deepest of ``backbone.layers``) and the autoencoder's input
        size for it at ``dataset.image_size`` (anomalib's default fits resnet50 at 256)."""
        level = int(cfg.backbone.layers[-1])
        _, channels, strides = feature_info(cfg.backbone.name)
        pool = int(own(cfg).init.get("pooling_kernel_size", 2))
        side = int(cfg.dataset.image_size or 224) // strides[level] // pool
        return {"backbone": cfg.backbone.name,
                "layer": timm_modules(cfg.backbone.name, [level])[0],
                "input_dim": channels[level] * side * side}


# -- frozen features: statistics or a memory bank travel --------------------------------------


class Padim(AnomalibModel, Summarizes, TorchScore):
    """anomalib's PaDiM federated by its statistics: each site's count, mean and centred
    scatter per position of anomalib's embeddings travel (float32, packed upper
    triangle) and merge exactly (:func:`~fedad.components.gaussian.combine_statistics`);
    the Gaussians are anomalib's (covariance ``S / (n - 1) + 0.01001 I``), its channel
    subset the same at every site (drawn from ``padim.channel_seed``)."""

    name = "anomalib-padim"
    model_name = "padim"
    iterative = False
    EPSILON: ClassVar[float] = 0.01 + 1e-5  # anomalib's MultiVariateGaussian: 0.01 I, then 1e-5 I

    @classmethod
    def reads(cls, cfg: Any) -> Reads:
        return Reads(strides=tuple(cfg.padim.strides))  # fedad's PaDiM's levels

    @classmethod
    def defaults(cls, cfg: Any) -> dict[str, Any]:
        return {**super().defaults(cfg), "n_features": int(cfg.padim.channels)}

    def __init__(self, cfg: Any, shape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(cfg, shape, device, seed)
        model = self.lm.model
        n = model.n_features_original
        g = torch.Generator().manual_seed(int(cfg.padim.channel_seed))
        # anomalib draws the subset with Python's random per instance: one for every site
        model.idx = torch.sort(torch.randperm(n, generator=g)[:model.n_features]).values.to(
            model.idx.device)
        self.d = int(model.n_features)
        self._stats: dict[str, np.ndarray] | None = None
        size = int(cfg.dataset.image_size)  # the embedding's positions at the run's size
        self.positions = int(np.prod(self.embeddings(torch.zeros(1, 3, size, size)).shape[-2:]))

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """anomalib's own embedding ``(N, d, h, w)`` (its extractor, its channel subset)."""
        model = self.lm.model.eval()
        out = []
        for x in self.batches(images):
            out.append(model.generate_embedding(model.feature_extractor(x)).cpu())
        return torch.cat(out)

    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        emb = self.embeddings(features)  # (N, d, h, w)
        rows = emb.flatten(2).permute(0, 2, 1)  # (N, P, d)
        self._stats = position_statistics(rows, device=self.device)
        return FitInfo()

    def summarize(self, round_t: int) -> Summary:
        if self._stats is None:
            raise RuntimeError("anomalib-padim: summarize() before fit()")
        return {"count": self._stats["count"].astype(np.int64),
                "mean": self._stats["mean"].astype(np.float32),
                "scatter": pack_upper(self._stats["scatter"], np.float32)}

    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        require_keys(summary, ("count", "mean", "scatter"), who)
        count = check_array(summary["count"], who, "count", shape=(1,), kind="i")
        if int(count[0]) < 1:
            raise BankError(f"{who}: 'count' is {int(count[0])}, expected >= 1")
        mean = check_array(summary["mean"], who, "mean", shape=(self.positions, self.d))
        scatter = check_array(summary["scatter"], who, "scatter",
                              shape=(self.positions, packed_size(self.d)))
        return {"count": count.astype(np.int64), "mean": mean.astype(np.float64),
                "scatter": scatter.astype(np.float64)}

    def descriptor(self, summary: Summary) -> np.ndarray:
        n = float(summary["count"][0])
        mean = np.asarray(summary["mean"], dtype=np.float64)
        scatter = np.asarray(summary["scatter"], dtype=np.float64)
        diag = np.cumsum([0, *range(self.d, 1, -1)])  # packed rows' diagonal entries
        return np.concatenate([mean.ravel(), (scatter[:, diag] / max(n - 1, 1)).ravel()])

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        if not summaries:
            raise BankError("anomalib-padim: no valid uploads to merge")
        return combine_statistics(summaries)

    def set_summary(self, global_summary: Summary) -> None:
        """anomalib's Gaussians (``mean`` ``(d, P)``, ``inv_covariance`` ``(P, d, d)``)
        from the merged statistics."""
        mean, cov = gaussian(global_summary, self.EPSILON)
        g = self.lm.model.gaussian
        g.mean = torch.from_numpy(mean.T.copy()).float().to(self.device)
        g.inv_covariance = inverse_covariance(cov, torch.float32, self.device)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        return None


class Patchcore(AnomalibModel, Summarizes, TorchScore):
    """anomalib's PatchCore federated by its memory bank: each site keeps anomalib's
    coreset (``KCenterGreedy`` at ``coreset_sampling_ratio``) of its own embeddings and
    uploads it; the global bank is their union, scored by anomalib's own
    nearest-neighbour score."""

    name = "anomalib-patchcore"
    model_name = "patchcore"
    iterative = False
    MAX_ROWS: ClassVar[int] = 2_000_000

    @classmethod
    def reads(cls, cfg: Any) -> Reads:
        return Reads(strides=tuple(cfg.patchcore.strides))  # fedad's PatchCore's levels

    @classmethod
    def defaults(cls, cfg: Any) -> dict[str, Any]:
        return {**super().defaults(cfg),
                "coreset_sampling_ratio": float(cfg.patchcore.upload_ratio)}

    def __init__(self, cfg: Any, shape, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(cfg, shape, device, seed)
        self.dim = int(sum(self.lm.model.feature_extractor.out_dims))
        self.bank: torch.Tensor | None = None

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """anomalib's own patch embeddings ``(N * h * w, d)`` (3x3-pooled levels)."""
        model = self.lm.model.eval()
        out = []
        for x in self.batches(images):
            feats = model.feature_extractor(x)
            feats = {k: model.feature_pooler(v) for k, v in feats.items()}
            out.append(model.reshape_embedding(model.generate_embedding(feats)).cpu())
        return torch.cat(out)

    def fit(self, features: torch.Tensor, global_summary: Summary | None,
            round_t: int) -> FitInfo:
        from anomalib.models.components.sampling import KCenterGreedy

        rows = self.embeddings(features)
        ratio = float(self.lm.coreset_sampling_ratio)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed)
            self.bank = KCenterGreedy(embedding=rows, sampling_ratio=ratio).sample_coreset()
        return FitInfo()

    def summarize(self, round_t: int) -> Summary:
        if self.bank is None:
            raise RuntimeError("anomalib-patchcore: summarize() before fit()")
        return {BANK: self.bank.float().numpy()}

    def validate(self, summary: Mapping[str, np.ndarray], who: str) -> Summary:
        require_keys(summary, (BANK,), who)
        bank = check_array(summary[BANK], who, BANK, ndim=2, shape=(None, self.dim),
                           max_elements=self.MAX_ROWS * self.dim)
        return {BANK: bank.astype(np.float32)}

    def descriptor(self, summary: Summary) -> np.ndarray:
        bank = np.asarray(summary[BANK], dtype=np.float64)
        return np.concatenate([bank.mean(axis=0), bank.std(axis=0)])

    def merge(self, summaries: Sequence[Summary], round_t: int) -> Summary:
        if not summaries:
            raise BankError("anomalib-patchcore: no valid uploads to merge")
        return {BANK: np.concatenate([np.asarray(s[BANK], np.float32)
                                        for s in summaries])}

    def set_summary(self, global_summary: Summary) -> None:
        """anomalib's memory bank: the merged one."""
        self.lm.model.memory_bank = torch.from_numpy(
            np.ascontiguousarray(global_summary[BANK])).float().to(self.device)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        return None


