"""diffad's config section (``diffad``), read into :class:`fedad.config.schema.RunConfig`
(a plain dataclass: layer 0). Its step budgets: :mod:`.budgets`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


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
