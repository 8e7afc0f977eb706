"""The reverse step's posterior and how far the model's is from the true one, per pixel
(what seed 003 scores with: Lu et al. 2023, Eq. 5-6, read from ``calc_bpd_loop`` of the
authors' code; Ho et al. 2020, Eq. 6-7 for the Gaussians).

With ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` the model's mean is the true
posterior's ``mu(x_t, x0)`` with ``x0`` replaced by ``x0_hat``; both Gaussians have the
variance ``var = beta (1 - abar_t') / (1 - abar_t)`` (a fixed-variance DDPM), so the KL
between ``q(x_t' | x_t, x0)`` and ``p_theta(x_t' | x_t)`` at every pixel and channel is
``(c0 (x0 - x0_hat))^2 / (2 var)`` with ``c0 = sqrt(abar_t') beta / (1 - abar_t)``: zero
where the model predicts the noise exactly, positive wherever it does not. ``t'`` is the
step before ``t`` on a respaced chain (:func:`chain`), as the authors score on a 250-step
one.
"""

from __future__ import annotations

import torch


def chain(timesteps: int, steps: int) -> list[int]:
    """The original timesteps of a ``steps``-step respaced chain over ``0..timesteps-1``,
    increasing, evenly spaced from 0 to ``timesteps - 1`` (improved DDPM's
    ``space_timesteps``: for 1,000 and 250, index 5 is step 20, 50 is 201, 100 is 401)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"need 1 <= steps <= timesteps, got {steps}, {timesteps}")
    if steps == 1:
        return [0]
    stride = (timesteps - 1) / (steps - 1)
    return [round(i * stride) for i in range(steps)]


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float,
                 clip: bool = True) -> torch.Tensor:
    """Eq. 15 of Ho et al.: ``x0_hat`` from ``x_t`` and the predicted noise (clipped to
    ``[-1, 1]`` with ``clip``, as guided diffusion's ``clip_denoised`` default)."""
    x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    return x0.clamp(-1, 1) if clip else x0


def posterior_mean(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float,
                   abar_prev: float) -> torch.Tensor:
    """``mu(x_t, x0)`` of ``q(x_t' | x_t, x0)`` (Ho et al., Eq. 7, respaced)."""
    beta = 1 - abar_t / abar_prev
    return (abar_prev ** 0.5 * beta / (1 - abar_t)) * x0 + (
        (1 - beta) ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t


def posterior_variance(abar_t: float, abar_prev: float) -> float:
    """``var = beta (1 - abar_t') / (1 - abar_t)`` with ``beta = 1 - abar_t / abar_t'``."""
    return (1 - abar_t / abar_prev) * (1 - abar_prev) / (1 - abar_t)


def posterior_kl(x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor, abar_t: float,
                 abar_prev: float, clip: bool = True) -> torch.Tensor:
    """The KL ``D(q(x_t' | x_t, x0) || p_theta(x_t' | x_t))`` per pixel and channel (nats;
    module docstring), same shape as ``x0``. ``abar_prev < abar_t`` is refused: ``t' < t``."""
    if not abar_t < abar_prev <= 1.0:
        raise ValueError(f"need abar_t < abar_prev <= 1, got {abar_t}, {abar_prev}")
    if abar_prev >= 1.0:
        raise ValueError("the step to t' = -1 has no variance: score at t >= 1")
    var = posterior_variance(abar_t, abar_prev)
    c0 = abar_prev ** 0.5 * (1 - abar_t / abar_prev) / (1 - abar_t)
    x0_hat = predicted_x0(x_t, eps, abar_t, clip)
    return (c0 * (x0 - x0_hat)).pow(2) / (2 * var)
