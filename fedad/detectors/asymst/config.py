"""asymst's config section (``asymst``), read into :class:`fedad.config.schema.RunConfig`
(a plain dataclass: layer 0). Its step budgets: :mod:`.budgets`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


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
