"""Gradient denoising (Lu et al. 2023, Algorithm 1): an anomaly-free reconstruction of an
image by gradient descent on an anomaly score whose updates are made diffusion steps.

Each of ``rounds`` rounds takes ``steps`` updates ``x <- omega x + s g_hat`` with
``omega = sqrt(1 - s^2)`` (Eq. 9: the update is a forward diffusion step whose "noise" is
``g_hat``, the negative gradient of the score normalised to unit variance per image), then
one denoising step: ``x`` is read as ``x_t`` at the chain's step ``t`` and replaced by the
mean of ``p_theta(x_t' | x_t)`` (the model pulls the image back onto normal images). The
authors' code: 100 rounds of 5 steps, ``s = 0.02``, the denoising step at index 8 of a
250-step chain, PaDiM's Mahalanobis score as the objective.

Step rules (``rule``): ``fixed`` is the paper's, every step of size ``s``. On a sharp
objective (fedad's PaDiM on MTD) a unit-variance step of 0.02 per pixel overshoots and
*raises* the score; ``backtrack`` (ours, a priori) tries ``s`` and halves it for an image
up to ``halvings`` times until the step does not raise that image's score (no step if
none does): the update stays Eq. 9's, with ``omega = sqrt(1 - s^2)`` of the step taken.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedad.diffusion.posterior import chain, posterior_mean, predicted_x0
from fedad.diffusion.unet import predict_noise
from fedad.progress import progress

Objective = Callable[[torch.Tensor], torch.Tensor]  # images in [-1, 1] -> (B,) scores


RULES = ("fixed", "backtrack")


def value_and_unit_gradient(objective: Objective,
                            x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``objective(x)`` ``(B,)`` and its negative gradient at ``x``, scaled to unit standard
    deviation per image (zero where the gradient is zero)."""
    x = x.detach().requires_grad_(True)
    value = objective(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    sd = grad.flatten(1).std(1).view(-1, 1, 1, 1)
    return value.detach(), -grad / sd.clamp_min(1e-12)


def unit_gradient(objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """The negative gradient of ``objective(x).sum()`` at ``x``, scaled to unit standard
    deviation per image (zero where the gradient is zero)."""
    return value_and_unit_gradient(objective, x)[1]


def diffusion_step(x: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. 9's update ``sqrt(1 - s^2) x + s g`` with a step size per image ``s`` ``(B,)``."""
    s = s.view(-1, *([1] * (x.dim() - 1)))
    return (1 - s * s).sqrt() * x + s * g


def backtracking_step(objective: Objective, x: torch.Tensor, s: float,
                      halvings: int) -> torch.Tensor:
    """One step of the ``backtrack`` rule (module docstring): per image, the first of
    ``s, s/2, ..., s/2^halvings`` whose step does not raise its score; none: unchanged."""
    value, g = value_and_unit_gradient(objective, x)
    x = x.detach()
    out = x.clone()
    todo = torch.ones(len(x), dtype=torch.bool, device=x.device)
    size = torch.full((len(x),), float(s), dtype=x.dtype, device=x.device)
    for _ in range(halvings + 1):
        idx = torch.nonzero(todo).flatten()
        cand = diffusion_step(x[idx], g[idx], size[idx])
        with torch.no_grad():
            ok = objective(cand) <= value[idx]
        out[idx[ok]] = cand[ok]
        todo[idx[ok]] = False
        if not todo.any():
            break
        size = size / 2
    return out


@torch.no_grad()
def denoise_mean(unet: torch.nn.Module, x: torch.Tensor, t: int, t_prev: int,
                 abar: torch.Tensor) -> torch.Tensor:
    """The mean of ``p_theta(x_t' | x_t)`` with ``x`` as ``x_t`` (no noise added)."""
    a_t, a_prev = float(abar[t]), float(abar[t_prev]) if t_prev >= 0 else 1.0
    eps = predict_noise(unet, x, torch.full((len(x),), t, dtype=torch.long, device=x.device))
    return posterior_mean(x, predicted_x0(x, eps, a_t), a_t, a_prev)


def gradient_denoise(x: torch.Tensor, objective: Objective, unet: torch.nn.Module,
                     abar: torch.Tensor, rounds: int = 100, steps: int = 5, s: float = 0.02,
                     t_index: int = 8, chain_steps: int = 250,
                     desc: str | None = None, rule: str = "fixed",
                     halvings: int = 4) -> torch.Tensor:
    """Algorithm 1 on ``x`` ``(B, C, H, W)`` in ``[-1, 1]``: the reconstruction, clipped to
    ``[-1, 1]``. ``objective`` maps images in ``[-1, 1]`` to per-image scores (lower is
    more normal) and must be differentiable; ``t_index`` is the denoising step's index on
    a ``chain_steps`` chain (:func:`~fedad.diffusion.posterior.chain`); ``rule`` and
    ``halvings``: the step rule (module docstring)."""
    if not 0 < s < 1:
        raise ValueError(f"the step size s must be in (0, 1), got {s}")
    if rule not in RULES or halvings < 0:
        raise ValueError(f"rule must be one of {RULES} and halvings >= 0, got {rule!r}, "
                         f"{halvings}")
    ts = chain(len(abar), chain_steps)
    if not 1 <= t_index < len(ts):
        raise ValueError(f"t_index must be in 1..{len(ts) - 1}, got {t_index}")
    t, t_prev = ts[t_index], ts[t_index - 1]
    omega = (1 - s * s) ** 0.5
    unet.eval()
    x = x.detach().clone()
    loop = range(rounds) if desc is None else progress(range(rounds), rounds, desc, every=30.0)
    for _ in loop:
        for _ in range(steps):
            if rule == "backtrack":
                x = backtracking_step(objective, x, s, halvings)
            else:
                x = omega * x + s * unit_gradient(objective, x)
        x = denoise_mean(unet, x, t, t_prev, abar)
    return x.clamp(-1, 1)
