"""The terms of F2PAD's objective (Eq. 12) on images ``(3, H, W)`` (or ``(N, 3, H, W)``),
pure torch with gradients. Each takes an optional ``mask`` ``(H, W)`` (or ``(N, H, W)``) of
the pixels that count (Algorithm 1 optimises only inside the dilated base mask)."""

from __future__ import annotations

import torch

LOG_EPS = 1e-4  # Eq. 8's epsilon (seed-methods.md: 1e-4)
NORM_EPS = 1e-12  # inside colour norms: a finite gradient where the vector is 0


def _masked_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Sum of per-pixel ``values`` ``(..., H, W)`` over ``mask`` (all pixels: ``None``)."""
    return values.sum() if mask is None else (values * mask.to(values)).sum()


def log_sparsity(a: torch.Tensor, mask: torch.Tensor | None = None,
                 eps: float = LOG_EPS) -> torch.Tensor:
    """Eq. 8, the LOG penalty: ``sum_ij log(sqrt(||a_ij||^2 + eps) + ||a_ij||)`` over the
    colour norm of each pixel of the anomaly ``a = x - n`` (a smooth stand-in for the
    number of anomalous pixels)."""
    sq = a.pow(2).sum(dim=-3)
    norm = torch.sqrt(sq + NORM_EPS)  # ||a_ij|| with a finite gradient at a = 0
    return _masked_sum(torch.log(torch.sqrt(sq + eps) + norm), mask)


def pixel_prior(n: torch.Tensor, means: torch.Tensor, inv_covs: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 10: ``sum_ij min_q (n_ij - mu_q)^T Lambda_q^-1 (n_ij - mu_q)``, the squared
    Mahalanobis distance of each pixel to its nearest mixture component (Eq. 9 without the
    component weights: every component equally likely). ``means`` ``(Q, 3)``, ``inv_covs``
    ``(Q, 3, 3)``."""
    pix = n.movedim(-3, -1).unsqueeze(-2)  # (..., H, W, 1, 3)
    d = pix - means.to(n)  # (..., H, W, Q, 3)
    maha = torch.einsum("...qc,qcd,...qd->...q", d, inv_covs.to(n), d)
    return _masked_sum(maha.min(dim=-1).values, mask)


def total_variation(n: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 11, vector total variation: ``sum_ij ||n_{i+1,j} - n_ij|| + ||n_{i,j+1} - n_ij||``
    (colour norms; a pair counts when its first pixel is in ``mask``)."""
    down = n[..., 1:, :] - n[..., :-1, :]
    right = n[..., :, 1:] - n[..., :, :-1]
    dn = torch.sqrt(down.pow(2).sum(dim=-3) + NORM_EPS)  # (..., H-1, W)
    dr = torch.sqrt(right.pow(2).sum(dim=-3) + NORM_EPS)  # (..., H, W-1)
    if mask is None:
        return dn.sum() + dr.sum()
    m = mask.to(n)
    return (dn * m[..., :-1, :]).sum() + (dr * m[..., :, :-1]).sum()


def objective(feature_loss: torch.Tensor, n: torch.Tensor, x: torch.Tensor,
              means: torch.Tensor, inv_covs: torch.Tensor, alpha1: float, alpha2: float,
              beta: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 12: ``F(n) = l_n(n) + alpha1 l_p^1(n) + alpha2 l_p^2(n) + beta l_a(x - n)``, with
    ``feature_loss`` the detector's ``l_n`` of ``n`` (Eq. 4-7)."""
    out = feature_loss + alpha1 * pixel_prior(n, means, inv_covs, mask)
    out = out + alpha2 * total_variation(n, mask)
    if beta:
        out = out + beta * log_sparsity(x - n, mask)
    return out
