"""diffad's step budgets (``budget=cpu | paper``): the values a run leaves unset, and where
each comes from. The network trains ``ddpm.steps`` optimiser steps per site on whole
images at ``diffad.size`` (the size it scores at), ``train.local_steps`` a round, with
AdamW on a cosine schedule and an EMA of its weights (scored with the EMA's).

``cpu`` (the default) is sized for one MTD row in at most an hour on 2 cores with 5 sites
simulated in one process: a 0.65 M-parameter UNet, images downscaled to 128 px (the
maps are upsampled to the input), an EMA of 0.99 (the reference's 0.997 averages over
~330 steps, most of this budget; 0.99 over ~100). ``paper`` is the authors' scale for a
GPU (their repository, anomaly_diff): ADM-256 (guided diffusion's 256-px UNet; the
authors fine-tune a pretrained one, fedad trains from scratch), 10,000 steps, AdamW at
1e-4 annealed, EMA 0.997, the head on the 64-px decoder block, 256-px images.
"""

from __future__ import annotations

CPU: dict[str, object] = {
    "train.local_steps": 25,  # a priori: FedAvg's many short rounds
    "ddpm.channels": [16, 32, 64],
    "ddpm.crop": 64,  # unused by diffad (whole images); kept for the DDPM's checks
    "ddpm.batch_size": 8,
    "ddpm.lr": 1e-3,  # a from-scratch UNet; annealed by the cosine schedule
    "ddpm.ema": 0.99,
    "ddpm.steps": 500,
    "diffad.size": 128,
}

PAPER: dict[str, object] = {
    "dataset.image_size": 256,
    "train.local_steps": 100,
    "ddpm.channels": [256, 256, 512, 512, 1024, 1024],  # ADM-256's widths (128 x mult)
    "ddpm.layers_per_block": 2,
    "ddpm.groups": 32,
    "ddpm.crop": 256,
    "ddpm.batch_size": 2,  # the authors' batch
    "ddpm.lr": 1e-4,
    "ddpm.ema": 0.997,
    "ddpm.steps": 10000,
    "diffad.size": 256,
}

BUDGETS = {"cpu": CPU, "paper": PAPER}
