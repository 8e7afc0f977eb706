"""The reverse process with a constant-variance perturbation: what turns a DDPM of normal
images into a generator of anomalous ones (seed 000's first abstract: "constant-variance
Gaussian perturbations"; the documented design it is read by is RealNet's SDAS: ancestral
sampling over respaced steps with every step's noise scaled by ``sqrt(1 + s)``).

One respaced ancestral step from ``t`` to ``t' < t`` (Ho et al. 2020, Eq. 6-7 with
``alpha_bar`` of the two steps, as improved DDPM respaces):
``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (clipped to ``[-1, 1]``),
``beta = 1 - abar_t / abar_t'``, ``mean = sqrt(abar_t') beta / (1 - abar_t) x0_hat
+ sqrt(1 - beta) (1 - abar_t') / (1 - abar_t) x_t``, ``var = beta (1 - abar_t') / (1 -
abar_t)`` and ``x_t' = mean + sqrt(1 + s) sqrt(var) z``. ``s = 0`` is the plain sampler.
"""

from __future__ import annotations

import torch

from fedad.diffusion.posterior import posterior_mean, posterior_variance, predicted_x0
from fedad.diffusion.schedule import q_sample, respaced
from fedad.diffusion.unet import predict_noise


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_prev: float,
                   inflation: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_{t'}`` from ``x_t`` and ``eps_theta(x_t, t)`` (module docstring); ``inflation``
    ``(B,)`` is ``s``, ``noise`` the ``z`` (unused at the last step, ``abar_prev = 1``)."""
    mean = posterior_mean(x, predicted_x0(x, eps, abar_t), abar_t, abar_prev)
    if abar_prev >= 1.0:
        return mean
    sd = posterior_variance(abar_t, abar_prev) ** 0.5
    return mean + (1 + inflation).sqrt().view(-1, 1, 1, 1) * sd * noise


@torch.no_grad()
def perturbed_sample(unet: torch.nn.Module, x0: torch.Tensor, abar: torch.Tensor,
                     t_start: int, steps: int, inflation: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Images from ``steps`` respaced ancestral steps starting at ``t_start``: from pure
    noise when ``t_start = T - 1`` (``x0`` then only gives the shape), else from ``x0``
    noised to ``t_start`` (SDEdit's reading). ``x0`` ``(B, C, H, W)`` in ``[-1, 1]``; any
    ``H, W`` (the UNet is fully convolutional; a multiple of ``2^(levels-1)``)."""
    unet.eval()
    device = x0.device
    T = len(abar)
    ts = respaced(t_start, steps)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    if t_start >= T - 1:
        x = noise
    else:
        x = q_sample(x0, torch.full((len(x0),), t_start, dtype=torch.long, device=device),
                     noise, abar)
    a = abar.tolist()
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        abar_prev = a[prev] if prev >= 0 else 1.0
        eps = predict_noise(unet, x, torch.full((len(x),), t, dtype=torch.long,
                                                device=device))
        z = torch.randn(x.shape, generator=generator).to(x)
        x = ancestral_step(x, eps, a[t], abar_prev, inflation.to(x), z)
        if prev < 0:
            break
    return x.clamp(-1, 1)
