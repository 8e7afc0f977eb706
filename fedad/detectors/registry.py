"""The one list of detectors, and the run's pair: a run is a detector x an exchange
(:mod:`fedad.exchanges.registry` lists those). Everything that depends on *which*
detector or exchange a run uses asks here or the object itself; nothing else compares
their names.

Which exchanges a detector can be federated by follows from what it declares: an
exchange ``requires`` capabilities (:mod:`fedad.detectors.capabilities`) and a detector
that lacks one is refused, naming it (:func:`supported`, :func:`pair_problem`).

Add a detector: write ``fedad/detectors/<name>/`` with a subclass of
:class:`~fedad.detectors.base.Detector` and the capabilities it offers, add one line to
:data:`DETECTORS` and one config section (a dataclass field of
:class:`~fedad.config.schema.RunConfig` named like the detector).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import replace
from functools import lru_cache

import torch

from fedad.config.fields import check_choices
from fedad.config.flat import fill_defaults
from fedad.config.ranges import check_ranges
from fedad.config.schema import RunConfig
from fedad.detectors.base import Detector, FeatureShape
from fedad.detectors.capabilities import (
    Budgeted,
    Family,
    PrivateRelease,
    StreamedFit,
    Summarizes,
    Trainable,
    capabilities,
    describe,
    missing,
)
from fedad.errors import ConfigError

# name -> "module:Class" (imported on first use, so a run loads only its own detector)
DETECTORS: dict[str, str] = {
    "feddymem": "fedad.detectors.feddymem.detector:FedDyMem",
    "patchcore": "fedad.detectors.patchcore.detector:PatchCore",
    "padim": "fedad.detectors.padim.detector:PaDiM",
    "asymst": "fedad.detectors.asymst.detector:AsymST",
    "diffad": "fedad.detectors.diffad.detector:DiffAD",
    # anomalib's models (the anomalib extra): detector=anomalib sections.anomalib.model=<m>
    # resolves to its member, anomalib-<m>
    "anomalib": "fedad.detectors.anomalib.detector:Anomalib",
    "anomalib-stfpm": "fedad.detectors.anomalib.detector:Stfpm",
    "anomalib-draem": "fedad.detectors.anomalib.detector:Draem",
    "anomalib-fre": "fedad.detectors.anomalib.detector:Fre",
    "anomalib-padim": "fedad.detectors.anomalib.detector:Padim",
    "anomalib-patchcore": "fedad.detectors.anomalib.detector:Patchcore",
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
    from fedad.exchanges.registry import EXCHANGES

    m = cfg.method
    if not m:
        return
    if m in DETECTORS:  # its summary, or (a network federated by weights alone) fedavg
        cfg.detector = m
        cfg.exchange = "summary" if issubclass(detector_class(m), Summarizes) else "fedavg"
    elif m == BANK:
        cfg.exchange = "summary"
    elif m in EXCHANGES:
        cfg.exchange = m
    else:
        raise ConfigError(f"method must be one of {', '.join((BANK, *EXCHANGES, *DETECTORS))}"
                          f", got {m!r}")
    cfg.method = ""


def supported(detector: str) -> list[str]:
    """The exchanges whose required capabilities ``detector`` declares."""
    from fedad.exchanges.registry import EXCHANGES, exchange_class

    cls = detector_class(detector)
    return [e for e in EXCHANGES if not missing(cls, exchange_class(e).requires)]


def pair_problem(detector: str, exchange: str) -> str | None:
    """Why ``detector`` cannot be federated by ``exchange`` (the capabilities it lacks),
    or ``None``."""
    from fedad.exchanges.registry import exchange_class

    lacks = missing(detector_class(detector), exchange_class(exchange).requires)
    if not lacks:
        return None
    declared = [c.__name__ for c in capabilities(detector_class(detector))]
    return (f"exchange={exchange} requires " + "; ".join(describe(c) for c in lacks)
            + f", which detector={detector} does not declare (it declares: "
            + (", ".join(declared) or "none") + "; it can be federated by: "
            + (", ".join(supported(detector)) or "none") + ")")


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``method`` resolved into ``detector`` x ``exchange`` and the pair
    checked (in place; idempotent).

    Raises:
        ConfigError: an unknown method, detector or exchange, or a pair whose exchange
            requires a capability the detector does not declare (naming it).
    """
    from fedad.exchanges.registry import exchange_class

    load_plugins(cfg)
    _apply_method(cfg)
    family = detector_class(cfg.detector)
    if issubclass(family, Family):  # the member the run's config chooses
        cfg.detector = family.member(cfg)
    _apply_budget(cfg, detector_class(cfg.detector))  # may set the image size (paper)
    if not cfg.dataset.image_size:  # the data's default, the same under every entry point
        cfg.dataset = replace(cfg.dataset, image_size=cfg.dataset.scored_size())
    exchange_class(cfg.exchange)
    problem = pair_problem(cfg.detector, cfg.exchange)
    if problem is not None:
        raise ConfigError(problem)
    return cfg


DEFAULT_ROUNDS = 10  # train.rounds=0 for a detector without a step budget


def _apply_budget(cfg: RunConfig, cls: type[Detector]) -> None:
    """A step-budgeted detector's unset values from its ``budget`` preset and the rounds
    its budget needs (``train.rounds``: 0, or refused when it says otherwise); any other
    detector's ``train.rounds=0`` is :data:`DEFAULT_ROUNDS`."""
    if not issubclass(cls, Budgeted):
        if not cfg.train.rounds:
            cfg.train = replace(cfg.train, rounds=DEFAULT_ROUNDS)
        return
    presets = cls.presets()
    if cfg.budget not in presets:
        raise ConfigError(f"budget={cfg.budget!r}: detector={cfg.detector} has the presets "
                          f"{', '.join(presets)}")
    fill_defaults(cfg, presets[cfg.budget], f"detector={cfg.detector} budget={cfg.budget}")
    rounds = len(cls.plan(cfg))
    if cfg.train.rounds and cfg.train.rounds != rounds:
        steps = ", ".join(f"{s.phase} {s.steps}" for s in cls.stages(cfg))
        raise ConfigError(
            f"train.rounds={cfg.train.rounds}: detector={cfg.detector} trains a budget of "
            f"steps ({steps}) at train.local_steps={cfg.train.local_steps} a round, which "
            f"takes {rounds} rounds; leave train.rounds at 0 or change the steps")
    if rounds < 1:
        raise ConfigError(f"detector={cfg.detector}: its step budget is empty (every "
                          "phase's steps are 0)")
    cfg.train = replace(cfg.train, rounds=rounds)


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
    from fedad.exchanges.registry import exchange_class
    from fedad.privacy.accountant import calibrated

    pv = cfg.privacy
    if pv.epsilon < 0:
        raise ConfigError(f"privacy.epsilon must be >= 0 (0: no noise), got {pv.epsilon}")
    if pv.epsilon == 0:
        return
    detector = detector_class(cfg.detector)
    if (not issubclass(detector, PrivateRelease) or exchange_class(cfg.exchange).site_model):
        private = [name for name in DETECTORS
                   if issubclass(detector_class(name), PrivateRelease)]
        raise ConfigError(f"privacy.epsilon > 0: differential privacy is built for the "
                          f"summary exchange of detectors that declare "
                          f"{describe(PrivateRelease)}: {', '.join(private)}; not for "
                          f"detector={cfg.detector} with exchange={cfg.exchange}")
    if pv.centres < 1 or pv.lloyd_iterations < 0:
        raise ConfigError(f"privacy.centres must be >= 1 and privacy.lloyd_iterations >= 0 "
                          f"(got {pv.centres}, {pv.lloyd_iterations})")
    calibrated(pv, detector.private_releases(cfg))  # raises on a missing clip or target


def _check_stream(cfg: RunConfig) -> None:
    """``backbone.stream=true``: a detector that declares :class:`StreamedFit`, the summary
    exchange, no differential privacy (its release clips every row at once)."""
    from fedad.exchanges.registry import exchange_class

    if not cfg.backbone.stream:
        return
    detector = detector_class(cfg.detector)
    streams = [n for n in DETECTORS if issubclass(detector_class(n), StreamedFit)]
    if not issubclass(detector, StreamedFit) or exchange_class(cfg.exchange).site_model:
        raise ConfigError(f"backbone.stream=true: streamed training features are read by "
                          f"detectors that declare {describe(StreamedFit)}: "
                          f"{', '.join(streams)}, with the summary exchange; not by "
                          f"detector={cfg.detector} with exchange={cfg.exchange} (drop "
                          "backbone.stream)")
    if cfg.privacy.epsilon > 0:
        raise ConfigError("backbone.stream=true with privacy.epsilon > 0: the private "
                          "release clips a site's rows all at once; drop one of them")


def check(cfg: RunConfig) -> RunConfig:
    """``cfg`` (unchanged) after checking every choice field, the detector x exchange pair
    and whether the exchange can run on that detector (FedBN needs BatchNorm). The run's
    whole check, its refinement included, is :func:`fedad.federation.compose.check`: what
    every command calls once a config is composed, before any process starts.

    Raises:
        ConfigError: naming the field(s) and the values they allow.
    """
    from fedad.exchanges.registry import exchange_class

    check_choices(cfg)
    check_ranges(cfg)
    resolved = resolve(copy.deepcopy(cfg))
    # what only the detector knows (asymst: its phases' rounds)
    detector_class(resolved.detector).check_config(resolved)
    _check_privacy(resolved)
    _check_secure(resolved)
    _check_stream(resolved)
    if exchange_class(resolved.exchange).site_model:  # built only when it matters
        exchange_for(resolved, create(resolved, feature_shape(resolved))).check()
    if not 0 < resolved.train.participation <= 1:
        raise ConfigError(f"train.participation must be in (0, 1], got "
                          f"{resolved.train.participation}")
    return cfg


def exchange_for(cfg: RunConfig, detector: Detector):
    """The run's exchange on one side (``detector``: that side's detector)."""
    from fedad.exchanges.registry import exchange_class

    return exchange_class(resolve(cfg).exchange)(cfg, detector)


def label(cfg: RunConfig) -> str:
    """A run's name in tables and logs: the detector with the summary exchange, else
    ``<detector>+<exchange>`` (FedDyMem's head: ``feddymem-head+fedavg``)."""
    resolve(cfg)
    if cfg.exchange == "summary":
        return cfg.detector
    cls = detector_class(cfg.detector)
    name = (cls.weights_label if issubclass(cls, Trainable) else "") or cls.name
    return f"{name}+{cfg.exchange}"


def detector_class(name: str) -> type[Detector]:
    """The class registered under ``name``."""
    if name not in DETECTORS:
        raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {name!r}")
    module, cls = DETECTORS[name].split(":")
    return vars(importlib.import_module(module))[cls]


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
    cls = detector_class(cfg.detector)
    reads = cls.reads(cfg)
    backbone = cfg.backbone
    if reads.strides:
        layers = list(_layers_for(backbone.name, tuple(int(s) for s in reads.strides)))
        backbone = replace(backbone, layers=layers)
    if reads.avg_pool is not None:
        backbone = replace(backbone, avg_pool=bool(reads.avg_pool))
    pixels = cls.inputs == "images"
    if backbone.pixels != pixels:
        backbone = replace(backbone, pixels=pixels)
    return cfg if backbone == cfg.backbone else replace(cfg, backbone=backbone)


def feature_shape(cfg: RunConfig) -> FeatureShape:
    """Geometry of the features the detector reads, without loading weights."""
    from fedad.features.extractor import feature_geometry

    c, h, w = feature_geometry(feature_config(cfg).backbone, cfg.dataset.scored_size())
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
