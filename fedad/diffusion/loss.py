"""The DDPM training objective (Ho et al. 2020, Eq. 14, ``L_simple``)."""

from __future__ import annotations

import torch

from fedad.diffusion.schedule import q_sample
from fedad.diffusion.unet import predict_noise


def ddpm_loss(unet: torch.nn.Module, x0: torch.Tensor, abar: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """``E_{t, eps} || eps - eps_theta(x_t, t) ||^2`` on a batch ``x0`` in ``[-1, 1]``:
    ``t`` uniform over the ``T`` steps, ``eps`` standard normal (drawn from ``generator``)."""
    b = x0.shape[0]
    t = torch.randint(0, len(abar), (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    return (predict_noise(unet, q_sample(x0, t, noise, abar), t) - noise).pow(2).mean()
