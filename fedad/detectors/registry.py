"""The one list of detectors and exchange methods. Everything that depends on *which*
detector or method a run uses asks here; nothing else compares their names.

Add a bank-exchange detector: write ``fedad/detectors/<name>/`` with a class that follows
:class:`~fedad.detectors.base.Detector`, add one line to :data:`DETECTORS` and one config
section (a dataclass field of :class:`~fedad.config.RunConfig` named like the detector, with
an optional ``strides`` list choosing the backbone levels it reads).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import replace
from functools import lru_cache

import torch

from fedad.config import RunConfig, check_choices
from fedad.detectors.base import Detector, FeatureShape
from fedad.errors import ConfigError

# name -> "module:Class" (imported on first use, so a run loads only its own detector)
DETECTORS: dict[str, str] = {
    "feddymem": "fedad.detectors.feddymem.detector:FedDyMem",
    "patchcore": "fedad.detectors.patchcore.detector:PatchCore",
    "padim": "fedad.detectors.padim.detector:PaDiM",
}

BANK = "bank"  # exchange what the detector summarises (its bank, coreset or statistics)
# FedDyMem's head trained by each client, with its weights exchanged instead of a bank.
WEIGHT_METHODS = ("local", "fedavg", "fedprox", "scaffold", "fedbn")
METHODS = (BANK, *WEIGHT_METHODS)
# method=<detector>: that detector's summaries exchanged (method=feddymem: the paper's method)
ALIASES = {name: (BANK, name) for name in DETECTORS}


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``method`` and ``detector`` checked and aliases resolved (in place).

    Raises:
        ConfigError: an unknown method or detector, or a weight-exchange method with a
            detector that has no trainable head.
    """
    if cfg.method in ALIASES:
        cfg.method, cfg.detector = ALIASES[cfg.method]
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join((*METHODS, *ALIASES))}, got "
                          f"{cfg.method!r}")
    if cfg.detector not in DETECTORS:
        raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got "
                          f"{cfg.detector!r}")
    if cfg.method in WEIGHT_METHODS and cfg.detector != "feddymem":
        raise ConfigError(f"method={cfg.method} exchanges the weights of FedDyMem's head; "
                          f"detector={cfg.detector} has none (use method=bank)")
    if cfg.method == "fedbn" and not cfg.head.batch_norm:
        raise ConfigError("method=fedbn keeps BatchNorm layers local, but head.batch_norm="
                          "false gives FedDyMem's head none (FedBN would be FedAvg); set "
                          "head.batch_norm=true (conf/method/fedbn.yaml does)")
    return cfg


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` (unchanged) after checking every choice field and the detector x method
    pair: what every command calls once a config is composed, before any process starts.

    Raises:
        ConfigError: naming the field(s) and the values they allow.
    """
    check_choices(cfg)
    resolve(copy.deepcopy(cfg))
    return cfg


def round_config(cfg: RunConfig) -> dict[str, float]:
    """What a weight-exchange server adds to every round's config for its clients:
    FedProx's ``proximal-mu`` (the server's mu wins over the client's), else nothing."""
    extra = {"fedprox": lambda c: {"proximal-mu": float(c.train.proximal_mu)}}
    return extra.get(resolve(cfg).method, lambda c: {})(cfg)


def exchanges_weights(cfg: RunConfig) -> bool:
    """True for the weight-exchanging baselines (FedDyMem head + weight exchange)."""
    return resolve(cfg).method in WEIGHT_METHODS


def label(cfg: RunConfig) -> str:
    """A run's name in tables and logs: the detector, or ``feddymem-head+<method>``."""
    resolve(cfg)
    return cfg.detector if cfg.method == BANK else f"feddymem-head+{cfg.method}"


def detector_class(name: str) -> type[Detector]:
    """The class registered under ``name``."""
    if name not in DETECTORS:
        raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {name!r}")
    module, cls = DETECTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


@lru_cache(maxsize=32)
def _layers_for(backbone: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    from fedad.features import layers_for_strides

    return tuple(layers_for_strides(backbone, strides))


def feature_config(cfg: RunConfig) -> RunConfig:
    """The config whose backbone settings are what the detector reads: ``backbone.layers``
    from its section's ``strides`` when it has them (PatchCore 8/16, PaDiM 4/8/16) and
    ``backbone.avg_pool`` from its section's ``avg_pool`` (PaDiM: raw features, as
    published), else the ``backbone`` section's. Feature caches key on these, so detectors
    never share a wrongly shaped or wrongly pooled feature."""
    resolve(cfg)
    if cfg.method in WEIGHT_METHODS:
        return cfg
    section = getattr(cfg, cfg.detector, None)
    strides = list(getattr(section, "strides", []) or [])
    backbone = cfg.backbone
    if strides:
        layers = list(_layers_for(backbone.name, tuple(int(s) for s in strides)))
        backbone = replace(backbone, layers=layers)
    pool = getattr(section, "avg_pool", None)
    if pool is not None:
        backbone = replace(backbone, avg_pool=bool(pool))
    return cfg if backbone == cfg.backbone else replace(cfg, backbone=backbone)


def feature_shape(cfg: RunConfig) -> FeatureShape:
    """Geometry of the features the detector reads, without loading weights."""
    from fedad.features import feature_geometry

    c, h, w = feature_geometry(feature_config(cfg).backbone, cfg.dataset.image_size)
    return FeatureShape(c, h, w)


def client_seed(cfg: RunConfig, site: int) -> int:
    """Seed of site ``site``'s detector: its own draw (Alg. 4 line 2), or the run's seed
    for every site with ``train.shared_init``."""
    return cfg.train.seed if cfg.train.shared_init else cfg.train.seed + 1000 * int(site)


def create(cfg: RunConfig, shape: FeatureShape, device: torch.device | str = "cpu",
           seed: int = 0) -> Detector:
    """A detector instance for ``cfg.detector`` (client or server side)."""
    resolve(cfg)
    return detector_class(cfg.detector)(cfg, shape, device, seed)


def rounds(cfg: RunConfig, detector: type[Detector] | Detector) -> tuple[int, int]:
    """First and last round of a bank-exchange run: a frozen-feature detector needs one
    round whatever ``train.rounds`` says."""
    last = cfg.train.rounds if detector.iterative else 1
    return detector.first_round, last


def evaluated(rnd: int, last: int, eval_every: int) -> bool:
    """Whether round ``rnd`` (of ``1..last``) is evaluated: every ``eval_every``-th round
    (``0`` counts as 1) and always the last."""
    return rnd == last or rnd % max(1, eval_every) == 0


def schedule(cfg: RunConfig) -> str:
    """How many rounds a run makes, in words (log lines and summary headings)."""
    cfg = resolve(cfg)
    if cfg.method == BANK and not detector_class(cfg.detector).iterative:
        return "1 round (frozen features)"
    return f"{cfg.train.rounds} rounds x {cfg.train.local_epochs} epoch(s)"
