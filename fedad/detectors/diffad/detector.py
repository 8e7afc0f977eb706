"""Anomalies removed as noises (seed 003: Lu et al., ICCV 2023) on the contract
(``detector=diffad``), federated by the weight exchanges: its module is the DDPM's UNet
and the feature head (:mod:`.network`); the backbone is frozen and never travels, nor do
the site's images.

Training is a step budget (:class:`~fedad.detectors.capabilities.Budgeted`;
``budgets.py``: ``budget=cpu | paper``): ``ddpm.steps`` AdamW steps on whole training
images downscaled to ``diffad.size`` (the size the maps are scored at), ``train.local_steps``
a round, the rate on ``train.schedule``, an EMA of the weights (``ddpm.ema``) that the
maps are scored with. Each step is ``L_simple`` plus ``diffad.feature_weight`` times the
head's squared error against the backbone's features of the clean image at
``diffad.strides``, each channel standardised by its mean and spread over the site's
training images (kept at the site); with ``diffad.feature_t=scored`` half of each batch
is noised to the chain steps the maps are scored at and the feature error counts on that
half only, the other half at ``t`` uniform.

Scores (Sec. 3.3): at every index of ``diffad.kl_steps`` on a ``diffad.chain``-step chain,
``x_t`` is the image noised once (seeded by ``diffad.seed``, drawn image by image in the
order given); the KL map is the per-pixel KL between the true and the model's posterior
(:func:`~fedad.diffusion.posterior.posterior_kl`), averaged over RGB and z-scored per
image; the feature map is the head's squared error, averaged over channels and bilinearly
upsampled. Both are averaged over the steps and combined (:func:`.maps.combine`, Eq. 11),
smoothed by a Gaussian of ``diffad.sigma``; the image score is the mean of the map's
``top_k`` largest pixels (the code's top-64).

``own_summary`` holds the two numbers Eq. 11's standardisation needs (the feature map's mean
and standard deviation over up to ``diffad.norm_images`` of the site's training normals);
they stay at the site, as do the feature targets' channel statistics (site state).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from fedad.components import ema
from fedad.components.budget import Stage
from fedad.components.ema import shadow_weights
from fedad.components.maps import gaussian_blur
from fedad.components.optimizer_state import load_optimizer_arrays, optimizer_arrays
from fedad.components.training import OptimSpec, Part, TrainHooks, build_optimizer, step
from fedad.config.schema import RunConfig
from fedad.detectors.base import Detector, FeatureShape, FitInfo, Reads, Scores, Summary
from fedad.detectors.capabilities import Budgeted, HeldOutLoss, Reconstructs
from fedad.detectors.diffad.budgets import BUDGETS
from fedad.detectors.diffad.maps import combine, feature_error, level_targets, zscore
from fedad.detectors.diffad.network import FeatureHead, NoiseAndFeatures
from fedad.diffusion.posterior import chain, posterior_kl
from fedad.diffusion.schedule import alphas_cumprod, q_sample
from fedad.diffusion.unet import build_unet
from fedad.errors import ConfigError
from fedad.features.levels import Levels, level_channels
from fedad.progress import progress

log = logging.getLogger("fedad")
NETWORK = "network"
TARGET_MEAN, TARGET_STD = "target.mean", "target.std"  # site state: the targets' statistics
STATS = "feature_stats"  # own_summary: the feature map's (mean, std) over training normals
_LEVELS: dict[str, Levels] = {}  # one frozen backbone per process, backbone and strides
_MAPS: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}  # the last raw maps (raw_maps)


def levels_for(cfg: RunConfig, device) -> Levels:
    key = f"{cfg.backbone.name}:{cfg.backbone.weights}:{list(cfg.diffad.strides)}:{device}"
    if key not in _LEVELS:
        _LEVELS[key] = Levels(cfg.backbone, cfg.diffad.strides).to(device)
    return _LEVELS[key]


def grid_stride(cfg: RunConfig) -> int:
    """The stride of the decoder block the head reads (``diffad.head_stride``)."""
    return int(cfg.diffad.head_stride)


def coarsest_stride(cfg: RunConfig) -> int:
    """The UNet's coarsest stride: an image side must be a multiple of it."""
    return 2 ** (len(cfg.ddpm.channels) - 1)


def net_size(cfg: RunConfig, image: int) -> int:
    """The side the network sees for ``image``-px inputs (``diffad.size``, 0: the input's),
    a multiple of the UNet's coarsest stride."""
    size = int(cfg.diffad.size) or image
    r = coarsest_stride(cfg)
    return max(r, size // r * r)


def to_net(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` at ``size`` x ``size`` (area-averaged when smaller)."""
    if x.shape[-2:] == (size, size):
        return x
    if size < x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class DiffAD(Detector, Budgeted, HeldOutLoss, Reconstructs):
    name = "diffad"
    iterative = True
    first_round = 1
    inputs = "images"
    batch_norm_hint = (" (diffad's UNet and feature head normalise by GroupNorm, which "
                       "FedBN does not keep local)")

    @classmethod
    def reads(cls, cfg: RunConfig) -> Reads:
        """The levels of the feature target (``diffad.strides``)."""
        return Reads(tuple(int(s) for s in cfg.diffad.strides))

    @classmethod
    def parts(cls, cfg: RunConfig) -> dict[str, Part]:
        """One part, the UNet with its feature head, trained by AdamW at ``ddpm.lr`` (the
        reference's; ``train.optimizer=sgd``: plain SGD)."""
        name = "sgd" if cfg.train.optimizer == "sgd" else "adamw"
        return {NETWORK: Part("", OptimSpec(name, cfg.ddpm.lr))}

    @classmethod
    def stages(cls, cfg: RunConfig) -> list[Stage]:
        return [Stage(NETWORK, int(cfg.ddpm.steps))]

    @classmethod
    def presets(cls) -> dict[str, dict[str, object]]:
        return BUDGETS

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raises :class:`ConfigError` for values no run can use."""
        d, T = cfg.diffad, cfg.ddpm.timesteps
        problems = []
        if not 2 <= d.chain <= T:
            problems.append(f"chain={d.chain} (2..ddpm.timesteps={T})")
        if not d.kl_steps or any(not 1 <= int(k) < d.chain for k in d.kl_steps):
            problems.append(f"kl_steps={list(d.kl_steps)} (each in 1..chain-1)")
        if not 1 <= d.denoise_index < d.chain:
            problems.append(f"denoise_index={d.denoise_index} (1..chain-1)")
        if not 0.0 <= d.alpha <= 1.0:
            problems.append(f"alpha={d.alpha} (0..1)")
        if not 0.0 < d.step_size < 1.0:
            problems.append(f"step_size={d.step_size} (between 0 and 1)")
        for name in ("top_k", "norm_images", "steps"):
            if getattr(d, name) < 1:
                problems.append(f"{name}={getattr(d, name)} (>= 1)")
        if d.rounds < 0 or d.feature_weight < 0 or d.sigma < 0 or d.halvings < 0:
            problems.append("rounds, feature_weight, sigma and halvings must be >= 0")
        if d.combine not in ("eq11", "sum"):
            problems.append(f"combine={d.combine!r} (eq11 | sum)")
        levels = len(cfg.ddpm.channels)
        if d.head_stride not in [2 ** i for i in range(levels)]:
            problems.append(f"head_stride={d.head_stride} (a decoder block's stride: "
                            f"{', '.join(str(2 ** i) for i in range(levels))})")
        if d.size < 0 or cfg.ddpm.steps < 1:
            problems.append(f"size={d.size} (>= 0) and ddpm.steps={cfg.ddpm.steps} (>= 1)")
        if problems:
            raise ConfigError("diffad: " + "; ".join(problems))

    def __init__(self, cfg: RunConfig, shape: FeatureShape, device="cpu", seed: int = 0):
        self.cfg, self.shape, self.device, self.seed = cfg, shape, torch.device(device), seed
        out = sum(level_channels(cfg.backbone, cfg.diffad.strides))
        block = len(cfg.ddpm.channels) - 1 - int(np.log2(grid_stride(cfg)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = build_unet(cfg.ddpm, shape.channels, seed, ema=False)
            head = FeatureHead(int(list(reversed(cfg.ddpm.channels))[block]), out,
                               cfg.ddpm.groups)
            # the EMA shadow covers the UNet and the head
            self.net = ema.attach(NoiseAndFeatures(unet, head, block),
                                  max(float(cfg.ddpm.ema), 0.0)).to(self.device)
        self.abar = alphas_cumprod(cfg.ddpm)
        # the feature targets' per-channel mean and spread over the site's training images
        self.target_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.spec: OptimSpec | None = None
        self._optim_state: dict[str, torch.Tensor] = {}

    # -- the module that travels -----------------------------------------------------------
    def module(self) -> torch.nn.Module:
        return self.net

    def _optimizer(self, hooks: TrainHooks | None) -> torch.optim.Optimizer:
        """The network's optimiser (the exchange's rule applied to its own; its moments
        carried over rounds while the settings stay)."""
        spec = self.optim_spec("network", hooks)
        if self.optimizer is None or self.spec != spec:
            self.optimizer = build_optimizer(self.net.parameters(), spec)
            if self._optim_state and self.spec is None:
                load_optimizer_arrays(self.optimizer, self._optim_state)
            self.spec = spec
        return self.optimizer

    # -- client ------------------------------------------------------------------------------
    def _unit_and_targets(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images in ``[-1, 1]`` at the network's size and their feature targets on the
        head's grid (CPU; targets in float16, unstandardised)."""
        levels = levels_for(self.cfg, self.device)
        size = net_size(self.cfg, int(features.shape[-1]))
        cells = size // grid_stride(self.cfg)
        units, targets = [], []
        for x in features.split(self.cfg.train.batch_size):
            x = to_net(x.to(self.device).float(), size)
            units.append(levels.to_unit(x).cpu())
            targets.append(level_targets(levels(x), (cells, cells)).half().cpu())
        return torch.cat(units), torch.cat(targets)

    def _standardise(self, targets: torch.Tensor) -> torch.Tensor:
        mean, std = self.target_stats or (torch.zeros(1), torch.ones(1))
        shape = (1, -1, 1, 1)
        return (targets.float() - mean.view(shape).to(targets.device)) / std.view(shape).to(
            targets.device)

    def scored_timesteps(self) -> list[int]:
        """The steps of ``T`` the maps are scored at (``kl_steps`` on the chain)."""
        ts = chain(len(self.abar), self.cfg.diffad.chain)
        return [int(ts[int(k)]) for k in self.cfg.diffad.kl_steps]

    def fit(self, features: torch.Tensor, global_summary: Summary | None, round_t: int,
            hooks: TrainHooks | None = None) -> FitInfo:
        d, dd = self.cfg.ddpm, self.cfg.diffad
        rp = self.round_plan(round_t)
        r = coarsest_stride(self.cfg)
        if len(features) == 0 or min(features.shape[-2:]) < r:
            log.warning("diffad: site seed %d has no training image of at least %d px: it "
                        "uploads the weights it received", self.seed, r)
            return FitInfo(notes={"no-training-images": 1.0})
        t0 = time.perf_counter()
        images, targets = self._unit_and_targets(features)
        if self.target_stats is None:  # fixed at the site's first round
            f = targets.float()
            self.target_stats = (f.mean((0, 2, 3)), f.std((0, 2, 3)).clamp_min(1e-6))
        gen = torch.Generator().manual_seed(
            (int(dd.seed) * 1_000_003 + int(self.seed)) * 1009 + int(round_t))
        optimizer = self._optimizer(hooks)
        schedule = self.scheduled(optimizer, self.spec, rp)
        scored = torch.tensor(self.scored_timesteps())
        self.net.train()
        w = float(dd.feature_weight)
        losses: list[float] = []
        desc = f"diffad round {round_t} (site seed {self.seed})"
        b = min(int(d.batch_size), len(images))
        for i in progress(range(rp.steps), rp.steps, desc, every=30.0):
            schedule.at(rp.first + i)
            idx = torch.randint(0, len(images), (b,), generator=gen)
            flips = torch.rand(2, generator=gen) < 0.5
            dims = [k for k, f in zip((2, 3), flips.tolist(), strict=True) if f]
            x0, f0 = images[idx], targets[idx]
            if dims:
                x0, f0 = x0.flip(dims), f0.flip(dims)
            x0, f0 = x0.to(self.device), self._standardise(f0.to(self.device))
            t = torch.randint(0, len(self.abar), (b,), generator=gen)
            on = torch.ones(b, dtype=torch.bool)
            if dd.feature_t == "scored":  # half the batch at the scored steps
                on = torch.arange(b) < max(1, b // 2)
                t[on] = scored[torch.randint(0, len(scored), (int(on.sum()),), generator=gen)]
            t = t.to(self.device)
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            eps, feats = self.net(q_sample(x0, t, noise, self.abar), t)
            loss = (eps - noise).pow(2).mean() + w * feature_error(
                feats[on.to(self.device)], f0[on.to(self.device)]).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss is {float(loss)}")
            step(self.net, optimizer, loss, hooks)
            ema.update(self.net)
            losses.append(float(loss.detach()))
        tail = losses[-max(1, len(losses) // 10):]
        return FitInfo(loss=sum(tail) / len(tail), seconds={"train": time.perf_counter() - t0},
                       steps=len(losses))

    @torch.no_grad()
    def held_out_loss(self, features: torch.Tensor, draws: int = 8) -> float:
        """:meth:`fit`'s objective on normal images it did not train on, under the weights
        the maps are scored with (the EMA shadow): every image at ``draws`` timesteps
        spread evenly over ``T`` (the noise term's expectation over uniform ``t``), the
        feature term at the scored timesteps in turn (``diffad.feature_t=scored``, as
        trained) or at the same spread, with noise fixed by ``diffad.seed`` (the same
        images give the same number). Lower is a better model of the normal images."""
        if len(features) == 0:
            return float("nan")
        images, targets = self._unit_and_targets(features)
        T, w = len(self.abar), float(self.cfg.diffad.feature_weight)
        spread = [int((j + 0.5) * T / draws) for j in range(draws)]
        scored = self.scored_timesteps()
        at_scored = self.cfg.diffad.feature_t == "scored"
        gen = torch.Generator().manual_seed(int(self.cfg.diffad.seed) * 7919 + 17)
        total = 0.0
        self.net.eval()
        with shadow_weights(self.net):
            b = self.cfg.train.batch_size
            for x0, f0 in zip(images.split(b), targets.split(b), strict=True):
                x0, f0 = x0.to(self.device), self._standardise(f0.to(self.device))
                for j in range(draws):
                    noise = torch.randn(x0.shape, generator=gen).to(x0)
                    t = torch.full((len(x0),), spread[j], dtype=torch.long,
                                   device=self.device)
                    eps, feats = self.net(q_sample(x0, t, noise, self.abar), t)
                    if at_scored:
                        ts = torch.full_like(t, scored[j % len(scored)])
                        _, feats = self.net(q_sample(x0, ts, noise, self.abar), ts)
                    loss = (eps - noise).pow(2).mean() + w * feature_error(feats, f0).mean()
                    total += float(loss) * len(x0) / draws
        return total / len(images)

    def raw_maps(self, features: torch.Tensor, image_size: int) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """The feature map and the z-scored KL map ``(N, S, S)`` of normalised images,
        each averaged over ``diffad.kl_steps`` (module docstring), before they are
        combined and smoothed. The last result is kept per process, keyed by the weights,
        the images and the config: sites of one process that hold the same global model
        (FedAvg's, evaluated in one simulation) score a shared test set once."""
        key = _fingerprint(self.net, features, image_size, self.cfg, self.target_stats)
        if key not in _MAPS:
            _MAPS.clear()
            _MAPS[key] = self._raw_maps(features, image_size)
        feature, kl = _MAPS[key]
        return feature.clone(), kl.clone()

    @torch.no_grad()
    def _raw_maps(self, features: torch.Tensor, image_size: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        with shadow_weights(self.net):
            return self._raw_maps_of(features, image_size)

    def _raw_maps_of(self, features: torch.Tensor, image_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.diffad
        levels = levels_for(self.cfg, self.device)
        size = net_size(self.cfg, int(features.shape[-1]))
        cells = size // grid_stride(self.cfg)
        ts = chain(len(self.abar), d.chain)
        a = self.abar.tolist()
        self.net.eval()
        feats, kls = [], []
        b = self.cfg.train.batch_size
        batches = range(0, len(features), b)
        for start in progress(batches, len(batches), f"diffad maps of {len(features)} images",
                              every=30.0):
            x = to_net(features[start:start + b].to(self.device).float(), size)
            x0 = levels.to_unit(x)
            target = self._standardise(level_targets(levels(x), (cells, cells)))
            fmap = torch.zeros(len(x), image_size, image_size, device=self.device)
            kmap = torch.zeros_like(fmap)
            noises = image_noise(x0.shape, len(d.kl_steps), int(d.seed), start)
            for j, k in enumerate(d.kl_steps):
                t, t_prev = ts[int(k)], ts[int(k) - 1]
                noise = noises[:, j].to(x0)
                tt = torch.full((len(x0),), t, dtype=torch.long, device=self.device)
                x_t = q_sample(x0, tt, noise, self.abar)
                eps, pred = self.net(x_t, tt)
                kl = posterior_kl(x0, x_t, eps, a[t], a[t_prev], d.clip).mean(1)
                kmap += _resize(zscore(kl), image_size) / len(d.kl_steps)
                fmap += _resize(feature_error(pred, target), image_size) / len(d.kl_steps)
            feats.append(fmap.cpu())
            kls.append(kmap.cpu())
        return torch.cat(feats), torch.cat(kls)

    def finish(self, feature: torch.Tensor, kl: torch.Tensor, how: str,
               summary: Summary) -> Scores:
        """Scores from :meth:`raw_maps`' two maps combined by ``how`` (``eq11``, ``sum``,
        ``feature``, ``kl``), smoothed, with the top-k image score."""
        d = self.cfg.diffad
        mean, std = 0.0, 1.0
        if how == "eq11":
            if STATS not in summary:
                raise ConfigError("diffad.combine=eq11 needs the site's feature statistics "
                                  f"({STATS!r} of own_summary) in the summary it scores with")
            mean, std = (float(v) for v in np.asarray(summary[STATS]).reshape(-1)[:2])
        maps = gaussian_blur(combine(feature, kl, how, d.alpha, mean, std), d.sigma)
        k = min(d.top_k, maps[0].numel())
        return Scores(maps=maps, image=maps.flatten(1).topk(k, dim=1).values.mean(1))

    def own_summary(self, features: torch.Tensor) -> Summary:
        """The feature map's mean and standard deviation over up to ``norm_images`` of the
        site's training normals, evenly spaced in the given order (what Eq. 11's
        standardisation divides by; module docstring)."""
        n = len(features)
        if n == 0:
            return {STATS: np.array([0.0, 1.0])}
        idx = np.unique(np.linspace(0, n - 1, min(n, self.cfg.diffad.norm_images)).round())
        # not through raw_maps' cache: that keeps the test set's maps
        feature, _ = self._raw_maps(features[torch.as_tensor(idx, dtype=torch.long)],
                                    int(features.shape[-1]))
        return {STATS: np.array([float(feature.mean()), float(feature.std())])}

    def score(self, features: torch.Tensor, global_summary: Summary,
              image_size: int) -> Scores:
        feature, kl = self.raw_maps(features, image_size)
        return self.finish(feature, kl, self.cfg.diffad.combine, global_summary)

    # -- reconstruction (Algorithm 1) --------------------------------------------------------
    def units(self) -> Levels:
        """The frozen backbone, whose ``to_unit`` / ``from_unit`` map the site's
        normalised pixels to ``[-1, 1]`` and back."""
        return levels_for(self.cfg, self.device)

    def reconstruct(self, images: torch.Tensor, objective,
                    desc: str | None = None) -> torch.Tensor:
        """The anomaly-free reconstructions of normalised ``images`` descending on
        ``objective`` (:func:`fedad.detectors.diffad.reconstruct.reconstruct`; ``desc``:
        log its progress under that name)."""
        from fedad.detectors.diffad.reconstruct import reconstruct

        with shadow_weights(self.net):
            return reconstruct(images.to(self.device), self.net.unet, self.abar, objective,
                               self.units(), self.cfg.diffad, desc)

    # -- state at the site -------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        if self.target_stats is not None:
            out[TARGET_MEAN], out[TARGET_STD] = (v.clone() for v in self.target_stats)
        if self.optimizer is not None:
            out.update(optimizer_arrays(self.optimizer))
        return out

    def load_state(self, arrays: Mapping[str, torch.Tensor]) -> None:
        if not arrays:
            return
        self.net.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("net.")})
        self.target_stats = ((arrays[TARGET_MEAN].clone(), arrays[TARGET_STD].clone())
                             if TARGET_MEAN in arrays else None)
        self.optimizer, self.spec = None, None
        self._optim_state = {k: v for k, v in arrays.items() if k.startswith("optim.")}


def _fingerprint(net: torch.nn.Module, features: torch.Tensor, image_size: int,
                 cfg: RunConfig, stats) -> bytes:
    """A content key of what :meth:`DiffAD.raw_maps` depends on."""
    h = hashlib.blake2b(digest_size=16)
    for v in stats or ():
        h.update(memoryview(v.detach().cpu().float().reshape(-1).numpy()).cast("B"))
    h.update(repr((image_size, cfg.diffad, cfg.ddpm, cfg.backbone, tuple(features.shape),
                   str(features.dtype), cfg.train.batch_size)).encode())
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(memoryview(v.detach().cpu().reshape(-1).numpy()).cast("B"))
    h.update(memoryview(features.detach().cpu().reshape(-1).numpy()).cast("B"))
    return h.digest()


def image_noise(shape: torch.Size, draws: int, seed: int, start: int) -> torch.Tensor:
    """``(B, draws, C, H, W)`` standard normal noise, image ``start + i`` of a call drawing
    from its own generator (the same noise whatever the batch size)."""
    out = []
    for i in range(shape[0]):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start + i)
        out.append(torch.randn((draws, *shape[1:]), generator=g))
    return torch.stack(out)


def _resize(maps: torch.Tensor, size: int) -> torch.Tensor:
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]
