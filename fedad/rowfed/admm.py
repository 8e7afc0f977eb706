"""RowFed's solver: linearised ADMM on the sparse row-wise fusion problem, with partial
participation (a reconstruction after FPFC, Yu et al. 2022's ADMM for pairwise-fusion
clustering, whose code is public; the abstract gives only "linearized ADMM" and "partial
participation": every choice below is fixed a priori).

Problem: ``min sum_m f_m(B_m) + sum_{m, j, k} P_2(|b_mjk|)
+ sum_j sum_{m < m'} P_1(||b_mj - b_m'j||)`` over the clients' ``B_m`` (``fusion="row"``:
``b_mj`` is row ``j``, one covariate's effects on every response; ``"matrix"``: the whole
matrix, the matrix-wise baseline; ``"entry"``: each entry, the entry-wise baseline).

With ``theta_{mm'} = B_m - B_m'`` (groups as above) and duals ``v_{mm'}``, one round:

1. each client joins with probability ``pi`` (seeded); a joining client gets its target
   ``U_m = mean_{m' != m} (B_m' + theta_{mm'} - v_{mm'} / rho)`` (what minimises the
   augmented Lagrangian's coupling terms, ``rho (M - 1) / 2 ||B_m - U_m||^2``) and takes
   ``local_steps`` proximal-gradient steps on ``f_m(B) + rho (M - 1) / 2 ||B - U_m||^2``
   with the sparsity prox ``P_2`` (the "linearised" step: ``f_m`` by its gradient, step
   ``1 / L`` with ``L`` the smooth part's Lipschitz constant); it uploads ``B_m``;
2. the server keeps the last ``B_m`` of every client (an absent client's stays), and for
   every pair: ``theta = prox_{P_1 / rho}(B_m - B_m' + v / rho)`` group by group (``P_1``
   at ``fusion_lam`` times :func:`group_weight`, the group lasso's scaling by the group's
   size, so that one weight means the same for rows, whole matrices and entries), then
   ``v += rho (B_m - B_m' - theta)``.

Start (``init``): ``"nonfed"``, every client's own sparse fit (:func:`fedad.rowfed.local.nonfed`),
``theta`` the differences of those fits and ``v = 0``; ``"zero"``: ``B = 0`` for every
client. The a priori choice was ``"zero"``; it was changed after the first benchmark table
(``benchmarks/results/rowfed_zero_start.md``), where the zero start left the non-convex
problem in over-fused stationary points (every seed's tuning at the grid's smallest fusion
weight). Non-convex fusion is usually started from the separate fits, and both are
reported.

Clusters (per row): the pairs whose ``||theta||`` is below ``cluster_tol`` (FPFC's 0.1) are
joined, and each connected component is one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedad.rowfed.config import RowFedConfig
from fedad.rowfed.local import nonfed
from fedad.rowfed.penalties import prox_entries, prox_group
from fedad.rowfed.problem import Client


def groups(d: np.ndarray, fusion: str) -> np.ndarray:
    """``(..., p, q)`` differences as ``(..., G, g)`` groups of the fusion."""
    p, q = d.shape[-2:]
    if fusion == "row":
        return d
    if fusion == "matrix":
        return d.reshape(*d.shape[:-2], 1, p * q)
    return d.reshape(*d.shape[:-2], p * q, 1)


def group_weight(fusion: str, p: int, q: int) -> float:
    """The fusion weight's factor for a group of ``g`` entries: ``sqrt(g / q)``, the group
    lasso's ``sqrt(g)`` (Yuan and Lin 2006) relative to a row's ``q`` entries, so row fusion
    keeps ``fusion_lam`` as it is, matrix fusion (``g = p q``) takes ``sqrt(p)`` times it and
    entry fusion (``g = 1``) ``1 / sqrt(q)`` times it. Without it one ``fusion_lam`` meant
    thresholds of one size on norms of very different sizes: a whole matrix's difference
    (``p q`` entries) lay beyond SCAD's ``a * lambda`` at every weight of the benchmark's
    grid, so the prox returned it unchanged, the duals stayed 0 and the matrix baseline
    stopped after one round with NonFed's fit."""
    size = {"row": q, "matrix": p * q, "entry": 1}[fusion]
    return float(np.sqrt(size / q))


@dataclass
class RowFedState:
    """What the server keeps: every client's last ``B_m``, the fusion variables and duals
    of every pair ``m < m'``, and the rounds taken."""

    b: np.ndarray  # (M, p, q)
    theta: np.ndarray  # (pairs, p, q)
    v: np.ndarray  # (pairs, p, q)
    pairs: np.ndarray  # (pairs, 2): m < m'
    round: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, m: int, p: int, q: int, b0: np.ndarray | None = None) -> RowFedState:
        i, k = np.triu_indices(m, 1)
        pairs = np.stack([i, k], 1)
        b = np.zeros((m, p, q)) if b0 is None else np.array(b0, dtype=float)
        theta = b[pairs[:, 0]] - b[pairs[:, 1]]
        return cls(b=b, theta=theta, v=np.zeros_like(theta), pairs=pairs)


def targets(state: RowFedState, rho: float) -> np.ndarray:
    """``U_m`` of every client ``(M, p, q)`` (module docstring, step 1)."""
    m = len(state.b)
    i, k = state.pairs[:, 0], state.pairs[:, 1]
    # pair (i, k): client i sees B_k + theta_ik - v_ik / rho, client k sees
    # B_i - theta_ik + v_ik / rho (theta and v are antisymmetric); summed per client by
    # the pairs' incidence matrices (a dense (M, pairs) product: faster than np.add.at)
    rows = np.arange(len(i))
    inc_i = np.zeros((m, len(i)))
    inc_k = np.zeros((m, len(i)))
    inc_i[i, rows] = 1.0
    inc_k[k, rows] = 1.0
    shift = state.theta - state.v / rho
    flat = (len(i), -1)
    acc = (inc_i @ (state.b[k] + shift).reshape(flat)
           + inc_k @ (state.b[i] - shift).reshape(flat)).reshape(state.b.shape)
    return acc / max(m - 1, 1)


def client_step(client: Client, b: np.ndarray, target: np.ndarray, weight: float,
                cfg: RowFedConfig) -> np.ndarray:
    """``local_steps`` proximal-gradient steps on ``f(B) + weight / 2 ||B - target||^2``
    with the entrywise sparsity prox, from ``b``."""
    step = 1.0 / (client.lipschitz() + weight)
    for _ in range(cfg.local_steps):
        g = client.grad(b) + weight * (b - target)
        b = prox_entries(b - step * g, cfg.sparsity_penalty, cfg.sparsity_lam, 1.0 / step,
                         cfg.a)
    return b


def client_steps(clients: list[Client], b: np.ndarray, target: np.ndarray, weight: float,
                 cfg: RowFedConfig) -> np.ndarray:
    """:func:`client_step` of several clients at once (``b``, ``target`` ``(K, p, q)``),
    the gradients from each client's Gram matrices: the same iterates up to rounding,
    without a Python loop over the clients."""
    gram = np.stack([c.gram[0] for c in clients])
    xty = np.stack([c.gram[1] for c in clients])
    step = 1.0 / (np.array([c.lipschitz() for c in clients]) + weight)[:, None, None]
    for _ in range(cfg.local_steps):
        g = gram @ b - xty + weight * (b - target)
        b = prox_entries(b - step * g, cfg.sparsity_penalty, cfg.sparsity_lam, 1.0 / step,
                         cfg.a)
    return b


def server_step(state: RowFedState, cfg: RowFedConfig) -> None:
    """``theta`` and ``v`` of every pair from the clients' current ``B`` (step 2)."""
    i, k = state.pairs[:, 0], state.pairs[:, 1]
    d = state.b[i] - state.b[k]
    shape = d.shape
    delta = groups(d + state.v / cfg.rho, cfg.fusion)
    lam = cfg.fusion_lam * group_weight(cfg.fusion, *shape[-2:])
    state.theta = prox_group(delta, cfg.fusion_penalty, lam, cfg.rho, cfg.a).reshape(shape)
    state.v = state.v + cfg.rho * (d - state.theta)


def participants(m: int, cfg: RowFedConfig, rnd: int) -> np.ndarray:
    """The clients joining round ``rnd`` (each with probability ``pi``, seeded by the
    config's seed and the round)."""
    rng = np.random.default_rng([cfg.seed, rnd])
    return np.flatnonzero(rng.random(m) < cfg.participation)


def run_round(clients: list[Client], state: RowFedState, cfg: RowFedConfig) -> np.ndarray:
    """One round (module docstring); returns who took part."""
    m = len(clients)
    who = participants(m, cfg, state.round + 1)
    u = targets(state, cfg.rho)
    weight = cfg.rho * max(m - 1, 1)
    before = state.b.copy()
    if len(who):
        state.b[who] = client_steps([clients[c] for c in who], state.b[who], u[who], weight,
                                    cfg)
    server_step(state, cfg)
    state.round += 1
    state.history.append({"round": state.round, "participants": len(who),
                          "change": float(np.linalg.norm(state.b - before)),
                          "primal": primal_residual(state)})
    return who


def primal_residual(state: RowFedState) -> float:
    """``max ||B_m - B_m' - theta_{mm'}||``: how far the split's constraint is from holding."""
    d = state.b[state.pairs[:, 0]] - state.b[state.pairs[:, 1]] - state.theta
    return float(np.abs(d).max()) if d.size else 0.0


def initial_state(clients: list[Client], cfg: RowFedConfig,
                  b0: np.ndarray | None = None) -> RowFedState:
    """The state before round 1: from ``b0`` ``(M, p, q)`` when given, else from
    ``cfg.init`` (module docstring)."""
    p, q = clients[0].x.shape[1], clients[0].y.shape[1]
    if b0 is None and cfg.init == "nonfed":
        b0 = nonfed(clients, cfg)
    return RowFedState.start(len(clients), p, q, b0)


def solve(clients: list[Client], cfg: RowFedConfig, b0: np.ndarray | None = None,
          tol: float = 0.0) -> RowFedState:
    """``cfg.rounds`` rounds from ``b0`` (else ``cfg.init``), stopping early once a round
    changes ``B`` by less than ``tol`` and the primal residual is below it."""
    cfg.check()
    state = initial_state(clients, cfg, b0)
    for _ in range(cfg.rounds):
        run_round(clients, state, cfg)
        h = state.history[-1]
        if tol and h["change"] < tol and h["primal"] < tol:
            break
    return state


def row_clusters(state: RowFedState, tol: float) -> np.ndarray:
    """``(p, M)`` cluster labels per row: clients joined where a pair's row of ``theta``
    has norm below ``tol``, clusters the connected components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m, p = state.b.shape[:2]
    norms = np.linalg.norm(state.theta, axis=-1)  # (pairs, p)
    out = np.zeros((p, m), dtype=int)
    for j in range(p):
        close = state.pairs[norms[:, j] < tol]
        graph = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(m, m))
        out[j] = connected_components(graph, directed=False)[1]
    return out


def kkt_residual(clients: list[Client], state: RowFedState, cfg: RowFedConfig) -> float:
    """The largest of: the primal residual, and every client's proximal-gradient
    fixed-point residual of the augmented Lagrangian at the current duals,
    ``||B - prox(B - s grad)|| / s`` (zero exactly at a stationary point)."""
    m = len(clients)
    u = targets(state, cfg.rho)
    weight = cfg.rho * max(m - 1, 1)
    worst = primal_residual(state)
    for c, client in enumerate(clients):
        b = state.b[c]
        s = 1.0 / (client.lipschitz() + weight)
        g = client.grad(b) + weight * (b - u[c])
        moved = prox_entries(b - s * g, cfg.sparsity_penalty, cfg.sparsity_lam, 1.0 / s,
                             cfg.a)
        worst = max(worst, float(np.abs(b - moved).max() / s))
    return worst
