"""The forward process' noise schedule (Ho et al. 2020, Sec. 2): ``beta_t`` for
``t = 1..T`` and ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, taken from ``diffusers``'
``DDPMScheduler`` (linear 1e-4 .. 0.02 as in the paper, or the cosine schedule)."""

from __future__ import annotations

import torch

from fedad.diffusion.config import DDPMConfig


def alphas_cumprod(cfg: DDPMConfig) -> torch.Tensor:
    """``alpha_bar_t`` for ``t = 0..T-1`` (float64)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=cfg.timesteps, beta_schedule=cfg.schedule)
    return sched.alphas_cumprod.to(torch.float64)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             abar: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (``t``: ``(B,)``)."""
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def respaced(t_start: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``t_start`` down to 0, evenly spaced (a respaced reverse
    process, as improved DDPM / RealNet sample with 20 of 1,000 steps); strictly
    decreasing, ending at 0."""
    if steps < 1 or t_start < 0:
        raise ValueError(f"need steps >= 1 and t_start >= 0, got {steps}, {t_start}")
    ts = torch.linspace(float(t_start), 0.0, steps).round().long().tolist()
    return list(dict.fromkeys(ts))
