"""The asymmetric teacher-student detector on the contract (``detector=asymst``), federated
by the weight exchanges: its module is the DDPM, the student and the head
(``nn.ModuleDict``); the teacher is frozen and never travels, nor do the site's images,
its synthetic defects or its pool of DDPM samples.

Training is a step budget (:class:`~fedad.detectors.capabilities.Budgeted`;
``budgets.py``: ``budget=cpu | paper``): ``ddpm.steps`` of the DDPM on random crops of the
site's normals (none with ``synthesis=cutpaste``), then ``asymst.student_steps`` of the
student with the cosine loss on defective images against the teacher's features of the
clean ones, then ``asymst.head_steps`` of the segmentation head (the student frozen) with
focal + L1 against the synthetic masks (DeSTSeg's two stages), ``train.local_steps`` a
round, each phase's rate on ``train.schedule``. With ``seg_head=false`` there is no head
phase and the map is the levels' cosine discrepancy (multiplied, DeSTSeg's).

The student's first round draws the site's pool of perturbed DDPM samples (at the DDPM's
crop size; with its EMA weights where it keeps them) from the global DDPM
(:mod:`fedad.diffusion.defects`) and keeps it in the site state. A site whose DDPM
training fails (a non-finite loss) or that has no image large enough for the UNet says so
in the log and in its fit metrics (``synthesis-fallback``), uploads the weights it
received, and makes cut-paste defects instead.

Scores: the map is the head's probability (or the cosine discrepancy) at stride 4,
upsampled to the image; the image score is the mean of its ``top_k`` largest pixels,
upsampled (DeSTSeg's; ``top_k_on=map``: at stride 4).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedad.components.budget import Stage
from fedad.components.ema import shadow_weights
from fedad.components.optimizer_state import load_optimizer_arrays, optimizer_arrays
from fedad.components.training import OptimSpec, Part, TrainHooks, build_optimizer, step
from fedad.config.schema import RunConfig
from fedad.detectors.asymst.budgets import BUDGETS
from fedad.detectors.asymst.head import SegmentationHead, cosine_map, discrepancy
from fedad.detectors.asymst.losses import cosine_loss, segmentation_loss
from fedad.detectors.asymst.student import Student
from fedad.detectors.asymst.synthesis import defect_batch
from fedad.detectors.asymst.teacher import Teacher, build_teacher, teacher_channels
from fedad.detectors.base import Detector, FeatureShape, FitInfo, Reads, Scores, Summary
from fedad.detectors.capabilities import Budgeted, RowMatrix, ShiftedRepresentation
from fedad.diffusion.defects import draw_pool
from fedad.diffusion.schedule import alphas_cumprod
from fedad.diffusion.train import train_ddpm
from fedad.diffusion.unet import build_unet
from fedad.errors import ConfigError

log = logging.getLogger("fedad")
DDPM, STUDENT, HEAD = "ddpm", "student", "head"
POOL, FALLBACK, PHASE = "pool", "synthesis.fallback", "phase"
_TEACHERS: dict[str, Teacher] = {}  # one frozen teacher per process and backbone


def stages(cfg: RunConfig) -> list[Stage]:
    """The DDPM's, the student's and the head's steps (a phase without steps is left out:
    the DDPM's with ``synthesis=cutpaste``, the head's with ``seg_head=false``)."""
    a = cfg.asymst
    return [Stage(DDPM, int(cfg.ddpm.steps) if a.synthesis == "ddpm" else 0),
            Stage(STUDENT, int(a.student_steps)),
            Stage(HEAD, int(a.head_steps) if a.seg_head else 0)]


def phases(cfg: RunConfig) -> list[str]:
    """The phase of every round ``1..train.rounds`` (of a resolved config)."""
    return AsymST.phases(cfg)


def batches(n: int, size: int, steps: int, gen: torch.Generator):
    """``steps`` batches of ``size`` indices of ``0..n-1``: passes over random
    permutations, each batch from one pass (a pass's tail too short for a batch is
    dropped, as a loader's ``drop_last``)."""
    per = max(1, n // size)
    order: list[torch.Tensor] = []
    for _ in range(steps):
        if not order:
            perm = torch.randperm(n, generator=gen)
            order = [perm[j * size:(j + 1) * size] for j in range(per)]
        yield order.pop(0)


def teacher_for(cfg: RunConfig, device) -> Teacher:
    key = f"{cfg.backbone.name}:{cfg.backbone.weights}:{list(cfg.asymst.strides)}:{device}"
    if key not in _TEACHERS:
        _TEACHERS[key] = build_teacher(cfg).to(device)
    return _TEACHERS[key]


class AsymST(Detector, Budgeted, ShiftedRepresentation, RowMatrix):
    name = "asymst"
    iterative = True
    first_round = 1
    inputs = "images"

    @classmethod
    def reads(cls, cfg: RunConfig) -> Reads:
        """The teacher's levels (``asymst.strides``)."""
        return Reads(tuple(int(s) for s in cfg.asymst.strides))

    @classmethod
    def parts(cls, cfg: RunConfig) -> dict[str, Part]:
        """The DDPM (``ddpm.lr``), the student (``asymst.student_lr``) and the head
        (``asymst.head_lr``), each trained by ``train.optimizer``."""
        a, name = cfg.asymst, cfg.train.optimizer
        return {DDPM: Part(f"{DDPM}.", OptimSpec(name, cfg.ddpm.lr)),
                STUDENT: Part(f"{STUDENT}.", OptimSpec(name, a.student_lr)),
                HEAD: Part(f"{HEAD}.", OptimSpec(name, a.head_lr))}

    @classmethod
    def stages(cls, cfg: RunConfig) -> list[Stage]:
        return stages(cfg)

    @classmethod
    def presets(cls) -> dict[str, dict[str, object]]:
        return BUDGETS

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raises :class:`ConfigError` for values no run can use."""
        a = cfg.asymst
        values = {f"asymst.{k}": getattr(a, k)
                  for k in ("student_steps", "pool", "sample_steps", "top_k")}
        if a.seg_head:
            values["asymst.head_steps"] = a.head_steps
        if a.synthesis == "ddpm":
            values["ddpm.steps"] = cfg.ddpm.steps
        bad = [f"{k}={v}" for k, v in values.items() if v < 1]
        if bad:
            raise ConfigError(f"asymst: {', '.join(bad)} must be >= 1")
        for k in ("inflation", "opacity"):
            lo, hi = getattr(a, k)
            if not 0 <= lo <= hi:
                raise ConfigError(f"asymst.{k}={getattr(a, k)}: need 0 <= low <= high")
        if not 0.0 < a.t_start <= 1.0:
            raise ConfigError(f"asymst.t_start={a.t_start}: need 0 < t_start <= 1")
        if not 0.0 <= a.clean_fraction < 1.0:
            raise ConfigError(f"asymst.clean_fraction={a.clean_fraction}: need 0 <= it < 1")
        if a.synthesis == "ddpm" and cfg.ddpm.crop > cfg.dataset.image_size:
            raise ConfigError(f"ddpm.crop={cfg.ddpm.crop} is larger than dataset.image_size="
                              f"{cfg.dataset.image_size}: the defects are drawn at the crop "
                              "size and pasted into the image")

    def __init__(self, cfg: RunConfig, shape: FeatureShape, device="cpu", seed: int = 0):
        self.cfg, self.shape, self.device, self.seed = cfg, shape, torch.device(device), seed
        a = cfg.asymst
        chans = teacher_channels(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.ModuleDict({
                DDPM: build_unet(cfg.ddpm, shape.channels, seed),
                STUDENT: Student(chans, a.student_width),
                HEAD: SegmentationHead(sum(chans), a.head_channels)}).to(self.device)
        self.abar = alphas_cumprod(cfg.ddpm)
        self.pool: torch.Tensor | None = None
        self.fallback = ""  # why this site makes cut-paste defects instead of DDPM ones
        self.phase = ""  # the phase whose optimiser is kept
        self.spec: OptimSpec | None = None  # ... and its settings
        self.optimizer: torch.optim.Optimizer | None = None
        self._optim_state: dict[str, torch.Tensor] = {}

    # -- the module that travels -----------------------------------------------------------
    def module(self) -> nn.Module:
        return self.net

    def representation(self) -> nn.Module:
        """The student's finest output projection (stride 4, the teacher's first level),
        before its per-site bias: what FedPHP's MMD and DBE's representation mean
        compare."""
        return self.net[STUDENT].out[-1]

    def representation_shift(self) -> torch.Tensor:
        """The student's per-site bias of its finest output (zero but under DBE)."""
        return self.net[STUDENT].shift

    def set_representation_shift(self, shift: torch.Tensor) -> None:
        self.net[STUDENT].shift = shift

    @classmethod
    def shift_key(cls) -> str:
        return f"{STUDENT}.shift"

    @classmethod
    def row_matrix(cls, cfg: RunConfig) -> str:
        """That projection's weight ``(C_teacher, width, 1, 1)``: RowFed personalises it
        row by row."""
        return f"{STUDENT}.out.{len(cfg.asymst.strides) - 1}.weight"

    def _optimizer(self, phase: str, hooks: TrainHooks | None) -> torch.optim.Optimizer:
        """The phase's optimiser (the exchange's rule applied to the part's own; its
        moments carried over rounds of the same phase and settings)."""
        spec = self.optim_spec(phase, hooks)
        if self.optimizer is None or self.phase != phase or self.spec != spec:
            self.optimizer = build_optimizer(self.net[phase].parameters(), spec)
            if self.phase == phase and self._optim_state and (self.spec in (None, spec)):
                load_optimizer_arrays(self.optimizer, self._optim_state)
            self.phase, self.spec = phase, spec
        return self.optimizer

    # -- client ------------------------------------------------------------------------------
    def _generators(self, round_t: int) -> tuple[torch.Generator, np.random.Generator]:
        seed = (int(self.cfg.asymst.seed) * 1_000_003 + int(self.seed)) * 1009 + int(round_t)
        return torch.Generator().manual_seed(seed), np.random.default_rng(seed)

    def fit(self, features: torch.Tensor, global_summary: Summary | None, round_t: int,
            hooks: TrainHooks | None = None) -> FitInfo:
        rp = self.round_plan(round_t)
        teacher = teacher_for(self.cfg, self.device)
        gen, rng = self._generators(round_t)
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        if rp.phase == DDPM:
            loss, steps = self._fit_ddpm(teacher, features, gen, rp, round_t, hooks)
            seconds["train"] = time.perf_counter() - t0
        else:
            if self.pool is None and self.cfg.asymst.synthesis == "ddpm" and not self.fallback:
                self.pool = self._draw_pool(teacher, features, gen)
                seconds["synthesis"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            loss, steps = self._fit_network(teacher, features, rp, gen, rng, hooks)
            seconds["train"] = time.perf_counter() - t1
        notes = {"synthesis-fallback": 1.0} if self.fallback else None
        return FitInfo(loss=loss, seconds=seconds, steps=steps, notes=notes)

    def _fit_ddpm(self, teacher: Teacher, features: torch.Tensor, gen: torch.Generator,
                  rp, round_t: int, hooks: TrainHooks | None) -> tuple[float, int]:
        d = self.cfg.ddpm
        multiple = 2 ** (len(d.channels) - 1)
        if self.fallback:
            return 0.0, 0
        if len(features) == 0 or min(features.shape[-2:]) < multiple:
            return self._fall_back(f"no image of at least {multiple} px"), 0
        images = torch.cat([teacher.to_unit(x.to(self.device).float()).cpu()
                            for x in features.split(self.cfg.train.batch_size)])
        state = {k: v.clone() for k, v in self.net[DDPM].state_dict().items()}
        optimizer = self._optimizer(DDPM, hooks)
        try:
            return train_ddpm(self.net[DDPM], optimizer, images, self.abar, rp.steps, d.crop,
                              d.batch_size, gen, hooks,
                              desc=f"DDPM round {round_t} (site seed {self.seed})",
                              owner=self.net, first=rp.first,
                              schedule=self.scheduled(optimizer, self.spec, rp))
        except FloatingPointError as exc:
            self.net[DDPM].load_state_dict(state)  # upload what it received
            return self._fall_back(str(exc)), 0

    def _fall_back(self, why: str) -> float:
        self.fallback = why
        log.warning("site seed %d cannot train the DDPM (%s): it takes part through the "
                    "federated model and makes cut-paste defects instead", self.seed, why)
        return 0.0

    def _draw_pool(self, teacher: Teacher, features: torch.Tensor,
                   gen: torch.Generator) -> torch.Tensor:
        a = self.cfg.asymst
        images = torch.cat([teacher.to_unit(x.to(self.device).float()).cpu()
                            for x in features.split(self.cfg.train.batch_size)])
        with shadow_weights(self.net[DDPM]) as unet:
            return draw_pool(unet, self.abar, images, a.pool, a.start, a.t_start,
                             a.sample_steps, a.inflation, gen,
                             desc=f"DDPM defect pool (site seed {self.seed})",
                             size=min(int(self.cfg.ddpm.crop), *images.shape[-2:]))

    def _fit_network(self, teacher: Teacher, features: torch.Tensor, rp,
                     gen: torch.Generator, rng: np.random.Generator,
                     hooks: TrainHooks | None) -> tuple[float, int]:
        a, t = self.cfg.asymst, self.cfg.train
        phase = rp.phase
        student, head = self.net[STUDENT], self.net[HEAD]
        student.train(phase == STUDENT)
        head.train(phase == HEAD)
        optimizer = self._optimizer(phase, hooks)
        schedule = self.scheduled(optimizer, self.spec, rp)
        pool = self.pool if not self.fallback else None
        n = len(features)
        b = min(t.batch_size, n)
        if n == 0 or (phase == STUDENT and b < 2):
            return 0.0, 0  # BatchNorm needs two images per batch
        losses = []
        for i, idx in enumerate(batches(n, b, rp.steps, gen)):
            schedule.at(rp.first + i)
            clean = features[idx].to(self.device).float()
            unit, masks = defect_batch(teacher.to_unit(clean).cpu(), pool, rng,
                                       a.clean_fraction, a.opacity)
            x = teacher.from_unit(unit.to(self.device))
            if phase == STUDENT:
                loss = cosine_loss(teacher(clean), student(x))
            else:
                with torch.no_grad():
                    s = student(x)
                logits = head(discrepancy(teacher(x), s))
                target = F.interpolate(masks[:, None].to(self.device),
                                       size=logits.shape[-2:], mode="area")[:, 0]
                loss = segmentation_loss(logits, (target > 0.5).float(), a.focal_gamma)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"asymst {phase} loss is {float(loss)}")
            step(self.net, optimizer, loss, hooks)
            losses.append(float(loss.detach()))
        tail = losses[-max(1, len(losses) // 10):]
        return float(np.mean(tail)), len(losses)

    def own_summary(self, features: torch.Tensor) -> Summary:
        return {}  # the network scores alone

    @torch.no_grad()
    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        teacher = teacher_for(self.cfg, self.device)
        self.net.eval()
        maps, images = [], []
        for x in features.split(self.cfg.train.batch_size):
            x = x.to(self.device).float()
            t, s = teacher(x), self.net[STUDENT](x)
            a = self.cfg.asymst
            m = (torch.sigmoid(self.net[HEAD](discrepancy(t, s))) if a.seg_head
                 else cosine_map(t, s, a.levels))
            up = F.interpolate(m[:, None], size=(image_size, image_size), mode="bilinear",
                               align_corners=False)[:, 0]
            top = up if a.top_k_on == "input" else m
            k = min(a.top_k, top[0].numel())
            images.append(top.flatten(1).topk(k, dim=1).values.mean(1).cpu())
            maps.append(up.cpu())
        return Scores(maps=torch.cat(maps), image=torch.cat(images))

    # -- state at the site -------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        if self.pool is not None:
            out[POOL] = self.pool.clone()
        if self.fallback:
            out[FALLBACK] = torch.tensor(list(self.fallback.encode()), dtype=torch.uint8)
        if self.optimizer is not None:  # the kept optimiser's phase, as its name's bytes
            out[PHASE] = torch.tensor(list(self.phase.encode()), dtype=torch.uint8)
            out.update(optimizer_arrays(self.optimizer))
        return out

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        if not arrays:
            return
        self.net.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("net.")})
        self.pool = arrays[POOL].clone() if POOL in arrays else None
        self.fallback = (bytes(arrays[FALLBACK].tolist()).decode() if FALLBACK in arrays
                         else "")
        self.phase = bytes(arrays[PHASE].tolist()).decode() if PHASE in arrays else ""
        self.optimizer, self.spec = None, None
        self._optim_state = {k: v for k, v in arrays.items() if k.startswith("optim.")}

