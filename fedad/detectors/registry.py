"""The one list of detectors, and the run's pair: a run is a detector x an exchange
(:mod:`fedad.federation.exchanges` lists those). Everything that depends on *which*
detector or exchange a run uses asks here or the object itself; nothing else compares
their names.

Add a detector: write ``fedad/detectors/<name>/`` with a class that follows
:class:`~fedad.detectors.base.Detector`, add one line to :data:`DETECTORS` and one config
section (a dataclass field of :class:`~fedad.config.schema.RunConfig` named like the detector, with
an optional ``strides`` list choosing the backbone levels it reads).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import replace
from functools import lru_cache

import torch

from fedad.config.schema import RunConfig, check_choices
from fedad.detectors.base import Detector, FeatureShape
from fedad.errors import ConfigError

# name -> "module:Class" (imported on first use, so a run loads only its own detector)
DETECTORS: dict[str, str] = {
    "feddymem": "fedad.detectors.feddymem.detector:FedDyMem",
    "patchcore": "fedad.detectors.patchcore.detector:PatchCore",
    "padim": "fedad.detectors.padim.detector:PaDiM",
    "asymst": "fedad.detectors.asymst.detector:AsymST",
    "diffad": "fedad.detectors.diffad.detector:DiffAD",
}

BANK = "bank"  # method=bank: the summary exchange (the name before exchanges had their own)


def load_plugins(cfg: RunConfig) -> None:
    """Import ``cfg.plugins`` (once each): modules that register detectors or exchanges.

    Raises:
        ConfigError: a plugin that cannot be imported, naming it.
    """
    for name in cfg.plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {name!r} ({exc})") from exc


def _apply_method(cfg: RunConfig) -> None:
    """``method`` (a shorthand) into ``detector`` and ``exchange``, then cleared."""
    from fedad.federation.exchanges import EXCHANGES

    m = cfg.method
    if not m:
        return
    if m in DETECTORS:  # its summary, or (a network federated by weights alone) fedavg
        supported = detector_class(m).exchanges
        cfg.detector = m
        cfg.exchange = next((e for e in ("summary", "fedavg") if e in supported), supported[0])
    elif m == BANK:
        cfg.exchange = "summary"
    elif m in EXCHANGES:
        cfg.exchange = m
    else:
        raise ConfigError(f"method must be one of {', '.join((BANK, *EXCHANGES, *DETECTORS))}"
                          f", got {m!r}")
    cfg.method = ""


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``method`` resolved into ``detector`` x ``exchange``, the pair checked
    and the exchange's own settings applied (in place; idempotent).

    Raises:
        ConfigError: an unknown method, detector or exchange, or a pair the detector does
            not support (naming both and what it supports).
    """
    from fedad.federation.exchanges import exchange_class

    load_plugins(cfg)
    _apply_method(cfg)
    detector = detector_class(cfg.detector)
    exchange = exchange_class(cfg.exchange)
    if cfg.exchange not in detector.exchanges:
        raise ConfigError(f"detector={cfg.detector} does not support exchange={cfg.exchange}"
                          f" (it supports: {', '.join(detector.exchanges)})")
    exchange.adjust(cfg)
    return cfg


def _check_secure(cfg: RunConfig) -> None:
    """``secure.*`` in range; with ``secure.enabled``, an exchange whose server step is a
    sum of the sites' uploads and no robust aggregation (it needs every upload)."""
    if not cfg.secure.enabled:
        return
    from fedad.privacy.secure_sum import check

    check(cfg.secure, cfg.num_clients)
    if cfg.robust.enabled:
        raise ConfigError("secure.enabled: the server sees only the sum of the uploads, so "
                          "robust aggregation (robust.enabled) cannot screen them; turn one "
                          "off")
    if not exchange_for(cfg, create(cfg, feature_shape(cfg))).summable:
        raise ConfigError(f"secure.enabled: the server step of detector={cfg.detector} with "
                          f"exchange={cfg.exchange} is not a sum of the sites' uploads; "
                          "secure aggregation is built for PaDiM's statistics (summary "
                          "exchange) and the weighted means of fedavg, fedprox and fedbn")


def _check_privacy(cfg: RunConfig) -> None:
    """``privacy.*`` in range; with ``privacy.epsilon > 0``, a detector that can release its
    summary privately (``private_releases``) under the summary exchange, a clip bound and a
    reachable target."""
    from fedad.federation.exchanges import exchange_class
    from fedad.privacy.accountant import calibrated

    pv = cfg.privacy
    if pv.epsilon < 0:
        raise ConfigError(f"privacy.epsilon must be >= 0 (0: no noise), got {pv.epsilon}")
    if pv.epsilon == 0:
        return
    detector = detector_class(cfg.detector)
    releases = getattr(detector, "private_releases", None)
    if releases is None or exchange_class(cfg.exchange).needs != "summary":
        private = [name for name in DETECTORS
                   if hasattr(detector_class(name), "private_releases")]
        raise ConfigError(f"privacy.epsilon > 0: differential privacy is built for the "
                          f"summary exchange of {', '.join(private)}; not for "
                          f"detector={cfg.detector} with exchange={cfg.exchange}")
    if pv.centres < 1 or pv.lloyd_iterations < 0:
        raise ConfigError(f"privacy.centres must be >= 1 and privacy.lloyd_iterations >= 0 "
                          f"(got {pv.centres}, {pv.lloyd_iterations})")
    calibrated(pv, releases(cfg))  # raises on a missing clip or an unreachable target


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` (unchanged) after checking every choice field, the detector x exchange pair
    and whether the exchange can run on that detector (FedBN needs BatchNorm): what every
    command calls once a config is composed, before any process starts.

    Raises:
        ConfigError: naming the field(s) and the values they allow.
    """
    from fedad.federation.exchanges import exchange_class

    check_choices(cfg)
    resolved = resolve(copy.deepcopy(cfg))
    own_check = getattr(detector_class(resolved.detector), "check_config", None)
    if own_check is not None:  # what only the detector knows (asymst: its phases' rounds)
        own_check(resolved)
    _check_privacy(resolved)
    _check_secure(resolved)
    if exchange_class(resolved.exchange).needs == "module":  # built only when it matters
        exchange_for(resolved, create(resolved, feature_shape(resolved))).check()
    if resolved.refine != "none" and not hasattr(detector_class(resolved.detector),
                                                 "score_features"):
        raise ConfigError(f"refine={resolved.refine} needs a detector with a differentiable "
                          f"score (score_features); {resolved.detector} has none")
    f2 = resolved.f2pad
    bad = [k for k in ("components", "max_iterations", "k_s", "candidates")
           if getattr(f2, k) < 1] + [k for k in ("alpha1", "alpha2", "beta0", "lr", "clip",
                                                  "gamma0", "tolerance", "mask_threshold")
                                      if getattr(f2, k) < 0]
    bad += [k for k in ("dilation", "margin", "images", "opening", "patience",
                        "min_iterations") if getattr(f2, k) < 0]
    if bad:
        raise ConfigError("f2pad: " + ", ".join(f"{k}={getattr(f2, k)}" for k in bad)
                          + " out of range (counts >= 1, weights and sizes >= 0)")
    if not 0 < resolved.train.participation <= 1:
        raise ConfigError(f"train.participation must be in (0, 1], got "
                          f"{resolved.train.participation}")
    if resolved.refine == "f2pad" and f2.init == "diffusion" and not f2.diffusion_run:
        raise ConfigError("f2pad.init=diffusion needs f2pad.diffusion_run: a finished "
                          "diffad run whose site models reconstruct the initial image")
    return cfg


def exchange_for(cfg: RunConfig, detector: Detector):
    """The run's exchange on one side (``detector``: that side's detector)."""
    from fedad.federation.exchanges import exchange_class

    return exchange_class(resolve(cfg).exchange)(cfg, detector)


def label(cfg: RunConfig) -> str:
    """A run's name in tables and logs: the detector with the summary exchange, else
    ``<detector>+<exchange>`` (FedDyMem's head: ``feddymem-head+fedavg``)."""
    resolve(cfg)
    if cfg.exchange == "summary":
        return cfg.detector
    cls = detector_class(cfg.detector)
    return f"{getattr(cls, 'weights_label', cls.name)}+{cfg.exchange}"


def detector_class(name: str) -> type[Detector]:
    """The class registered under ``name``."""
    if name not in DETECTORS:
        raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {name!r}")
    module, cls = DETECTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


@lru_cache(maxsize=32)
def _layers_for(backbone: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    from fedad.features.extractor import layers_for_strides

    return tuple(layers_for_strides(backbone, strides))


def feature_config(cfg: RunConfig) -> RunConfig:
    """The config whose backbone settings are what the detector reads: ``backbone.layers``
    from its section's ``strides`` when it has them (PatchCore 8/16, PaDiM 4/8/16) and
    ``backbone.avg_pool`` from its section's ``avg_pool`` (PaDiM: raw features, as
    published), else the ``backbone`` section's, and ``backbone.pixels`` from the
    detector's ``inputs`` (``"images"``: it is handed normalised pixels). Feature caches
    key on these, so detectors never share a wrongly shaped or wrongly pooled feature."""
    resolve(cfg)
    section = getattr(cfg, cfg.detector, None)
    strides = list(getattr(section, "strides", []) or [])
    backbone = cfg.backbone
    if strides:
        layers = list(_layers_for(backbone.name, tuple(int(s) for s in strides)))
        backbone = replace(backbone, layers=layers)
    pool = getattr(section, "avg_pool", None)
    if pool is not None:
        backbone = replace(backbone, avg_pool=bool(pool))
    pixels = getattr(detector_class(cfg.detector), "inputs", "features") == "images"
    if backbone.pixels != pixels:
        backbone = replace(backbone, pixels=pixels)
    return cfg if backbone == cfg.backbone else replace(cfg, backbone=backbone)


def feature_shape(cfg: RunConfig) -> FeatureShape:
    """Geometry of the features the detector reads, without loading weights."""
    from fedad.features.extractor import feature_geometry

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


def rounds(cfg: RunConfig) -> tuple[int, int]:
    """First and last round of the run (the exchange decides: a frozen-feature detector
    with the summary exchange needs one round whatever ``train.rounds`` says)."""
    resolve(cfg)
    return exchange_for(cfg, detector_class(cfg.detector)).rounds()


def evaluated(rnd: int, last: int, eval_every: int) -> bool:
    """Whether round ``rnd`` (of ``1..last``) is evaluated: every ``eval_every``-th round
    (``0`` counts as 1) and always the last."""
    return rnd == last or rnd % max(1, eval_every) == 0


def schedule(cfg: RunConfig) -> str:
    """How many rounds a run makes, in words (log lines and summary headings)."""
    resolve(cfg)
    return exchange_for(cfg, detector_class(cfg.detector)).schedule()
