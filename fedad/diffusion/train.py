"""A site's DDPM training: optimiser steps of :func:`~fedad.diffusion.loss.ddpm_loss` on
random crops of its normal images, each step through :func:`fedad.detectors.base.step` so a
weight exchange's hooks (FedProx's proximal term, SCAFFOLD's correction) apply."""

from __future__ import annotations

import torch

from fedad.components import ema
from fedad.components.budget import Scheduled
from fedad.components.training import TrainHooks, step
from fedad.diffusion.loss import ddpm_loss
from fedad.progress import progress


def random_crops(images: torch.Tensor, size: int, count: int,
                 generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops of ``images`` ``(N, C, H, W)`` (the whole
    image when it is smaller), each from a random image, flipped at random both ways."""
    n, _, h, w = images.shape
    size = min(size, h, w)
    idx = torch.randint(0, n, (count,), generator=generator)
    ys = torch.randint(0, h - size + 1, (count,), generator=generator)
    xs = torch.randint(0, w - size + 1, (count,), generator=generator)
    flips = torch.rand(count, 2, generator=generator) < 0.5
    out = []
    for i, y, x, f in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist(), strict=True):
        c = images[i, :, y:y + size, x:x + size]
        dims = [d for d, flip in zip((1, 2), f, strict=True) if flip]
        out.append(c.flip(dims) if dims else c)
    return torch.stack(out)


def train_ddpm(unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, abar: torch.Tensor, steps: int, crop: int, batch: int,
               generator: torch.Generator, hooks: TrainHooks | None = None,
               desc: str = "DDPM", owner: torch.nn.Module | None = None,
               schedule: Scheduled | None = None, first: int = 0) -> tuple[float, int]:
    """``steps`` optimiser steps on crops of ``images`` (``(N, C, H, W)`` in ``[-1, 1]``,
    on the CPU; the model's device is used for the maths). ``owner``: the module the hooks
    see (the detector's whole module when ``unet`` is a part of it, so parameter names match
    the exchanged weights'). ``schedule``: the learning rate at step ``first + i`` of the
    phase; the UNet's EMA shadow (:mod:`fedad.components.ema`) follows every step.
    Returns the mean loss of the last tenth of the steps and the number of steps taken (0
    with no image)."""
    if steps < 1 or len(images) == 0:
        return 0.0, 0
    device = next(unet.parameters()).device
    unet.train()
    losses: list[float] = []
    for i in progress(range(steps), steps, desc, every=30.0):
        if schedule is not None:
            schedule.at(first + i)
        x0 = random_crops(images, crop, batch, generator).to(device)
        loss = ddpm_loss(unet, x0, abar, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the DDPM loss is {float(loss)}")
        step(unet if owner is None else owner, optimizer, loss, hooks)
        ema.update(unet)
        losses.append(float(loss.detach()))
    tail = losses[-max(1, steps // 10):]
    return sum(tail) / len(tail), steps
