"""Norm clipping: what bounds one image's contribution to a sum.

The bound itself must not depend on a site's private images; fedad takes it from public
images (the embedded texture photos, :func:`norm_quantile` of their features), fixed before
any site's data is seen.
"""

from __future__ import annotations

import torch


def clip_rows(rows: torch.Tensor, bound: float) -> torch.Tensor:
    """``rows`` ``(..., d)`` with every row of L2 norm above ``bound`` scaled down to it."""
    norms = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    return rows * (bound / norms.clamp_min(bound)).to(rows.dtype)


def norm_quantile(rows: torch.Tensor, q: float = 0.5) -> float:
    """The ``q`` quantile of the L2 norms of ``rows`` ``(..., d)``: a clip bound when
    ``rows`` are features of public images."""
    norms = torch.linalg.vector_norm(rows.reshape(-1, rows.shape[-1]).double(), dim=-1)
    return float(torch.quantile(norms, q))
