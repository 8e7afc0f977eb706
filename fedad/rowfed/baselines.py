"""RowFed's baselines on the same problem: NonFed (each client alone, with the same
sparsity penalty) and FedAvg (one shared ``B``); the matrix-wise and entry-wise fusion
baselines are :func:`fedad.rowfed.admm.solve` with ``fusion="matrix"`` / ``"entry"``."""

from __future__ import annotations

import numpy as np

from fedad.rowfed.admm import participants
from fedad.rowfed.config import RowFedConfig
from fedad.rowfed.local import nonfed
from fedad.rowfed.penalties import prox_entries
from fedad.rowfed.problem import Client

__all__ = ["fedavg", "nonfed"]


def fedavg(clients: list[Client], cfg: RowFedConfig) -> tuple[np.ndarray, list[dict]]:
    """One shared ``B`` ``(p, q)``: ``cfg.rounds`` rounds in which the joining clients take
    ``cfg.local_steps`` proximal-gradient steps from the global ``B`` and the server
    averages their results weighted by their samples; the per-round history."""
    p, q = clients[0].x.shape[1], clients[0].y.shape[1]
    b = np.zeros((p, q))
    history = []
    for rnd in range(1, cfg.rounds + 1):
        who = participants(len(clients), cfg, rnd)
        if len(who) == 0:
            history.append({"round": rnd, "participants": 0, "change": 0.0})
            continue
        local, weights = [], []
        for m in who:
            c, x = clients[m], b.copy()
            s = 1.0 / c.lipschitz()
            for _ in range(cfg.local_steps):
                x = prox_entries(x - s * c.grad(x), cfg.sparsity_penalty, cfg.sparsity_lam,
                                 1.0 / s, cfg.a)
            local.append(x)
            weights.append(c.n)
        nb = np.average(np.stack(local), axis=0, weights=weights)
        history.append({"round": rnd, "participants": len(who),
                        "change": float(np.linalg.norm(nb - b))})
        b = nb
    return b, history
