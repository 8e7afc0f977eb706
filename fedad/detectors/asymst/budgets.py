"""asymst's step budgets (``budget=cpu | paper``): the values a run leaves unset, and where
each comes from. Every number is per site and counts optimiser steps of the part's phase;
a federated run takes them ``train.local_steps`` a round, as many as a centralized one
(:mod:`fedad.components.budget`).

``cpu`` (the default) is sized for one MTD row in at most an hour on 2 cores with 5 sites
simulated in one process (a site's steps cost 5x in the federated rows; measured per step:
docs/asymst.md): the student and the head at DeSTSeg's 1:4 ratio of steps, the DDPM small
and trained on the crops it samples, Adam with a cosine schedule. ``paper`` is the scale
of the references, for a GPU: DeSTSeg's student (1,000 steps) and head (4,000 steps) at
batch 32 and 256 px; a DDPM of guided diffusion's 256-px design (128 base channels, four
levels) trained at 1e-4 with an EMA of 0.9999 (Dhariwal & Nichol's defaults: the seed
abstract and RealNet give no step count we could read, so its 20,000 steps are ours,
guided diffusion's scale for one category of a few hundred images).
"""

from __future__ import annotations

CPU: dict[str, object] = {
    "train.local_steps": 25,  # a priori: 30 to 56 rounds, FedAvg's many short rounds
    "ddpm.crop": 64,  # the DDPM trains and samples 64-px crops (what 2 cores hold)
    "ddpm.channels": [16, 32, 64],  # 0.64 M parameters (fedad/diffusion/unet.py)
    "ddpm.batch_size": 16,
    "ddpm.lr": 1e-3,
    "ddpm.ema": 0.0,
    "ddpm.steps": 300,
    "asymst.student_steps": 250,  # DeSTSeg's 1:4 (1,000 : 4,000)
    "asymst.head_steps": 1000,
    "asymst.student_lr": 1e-3,  # Adam's default rate, cosine-annealed
    "asymst.head_lr": 1e-3,
}

PAPER: dict[str, object] = {
    "dataset.image_size": 256,  # DeSTSeg's RESIZE_SHAPE
    "train.batch_size": 32,  # DeSTSeg
    "train.local_steps": 100,
    "ddpm.crop": 256,  # the DDPM at the size it samples
    "ddpm.channels": [128, 128, 256, 256, 512],  # guided diffusion's 256-px widths
    "ddpm.layers_per_block": 2,
    "ddpm.groups": 32,
    "ddpm.batch_size": 32,
    "ddpm.lr": 1e-4,  # guided diffusion
    "ddpm.ema": 0.9999,  # guided diffusion
    "ddpm.steps": 20000,
    "asymst.pool": 512,
    "asymst.student_steps": 1000,  # DeSTSeg: de_st_steps
    "asymst.head_steps": 4000,  # DeSTSeg: steps - de_st_steps
    "asymst.student_lr": 1e-3,
    "asymst.head_lr": 1e-3,
}

BUDGETS = {"cpu": CPU, "paper": PAPER}
