"""F2PAD's config section (``f2pad``), read into :class:`fedad.config.schema.RunConfig`
(a plain dataclass: layer 0)."""

from __future__ import annotations

from dataclasses import dataclass

from fedad.config.fields import choice


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
    # same site, ``diffusion_run`` | the masked pixels copied from the site's nearest
    # normal training image (global backbone descriptor; the MAE's offline substitute 2)
    init: str = choice("biharmonic", "input", "diffusion", "nearest")
    diffusion_run: str = ""  # init=diffusion: a finished diffad run (same image size)
    nearest_images: int = 200  # init=nearest: candidates, a seeded sample (0: all)
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
