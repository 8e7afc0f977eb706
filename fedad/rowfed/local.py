"""Each client's own fit of the sparse problem, ``min f_m(B) + sum_jk P_2(|b_jk|)``: the
NonFed baseline, and the start RowFed's ADMM takes by default (``RowFedConfig.init``)."""

from __future__ import annotations

import numpy as np

from fedad.rowfed.config import RowFedConfig
from fedad.rowfed.penalties import prox_entries
from fedad.rowfed.problem import Client


def nonfed(clients: list[Client], cfg: RowFedConfig, steps: int = 2000,
           tol: float = 1e-10) -> np.ndarray:
    """Every client's ``B_m`` ``(M, p, q)``: proximal gradient on ``f_m`` plus the sparsity
    penalty until a step moves less than ``tol`` (at most ``steps``)."""
    out = []
    for c in clients:
        b = np.zeros((c.x.shape[1], c.y.shape[1]))
        s = 1.0 / c.lipschitz()
        for _ in range(steps):
            nb = prox_entries(b - s * c.grad(b), cfg.sparsity_penalty, cfg.sparsity_lam,
                              1.0 / s, cfg.a)
            done = np.abs(nb - b).max() < tol
            b = nb
            if done:
                break
        out.append(b)
    return np.stack(out)
