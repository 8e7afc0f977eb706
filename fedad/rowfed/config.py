"""RowFed's settings (:class:`RowFedConfig`): the fusion and sparsity penalties, ADMM's
``rho``, participation and the start; shared by the solver (:mod:`fedad.rowfed.admm`), each
client's own fit (:mod:`fedad.rowfed.local`) and the baselines."""

from __future__ import annotations

from dataclasses import dataclass

FUSIONS = ("row", "matrix", "entry")
INITS = ("nonfed", "zero")


@dataclass
class RowFedConfig:
    fusion: str = "row"  # row (SROF) | matrix | entry (the baselines' groups)
    fusion_penalty: str = "scad"  # P_1: scad | mcp | l1 (SCAD: FPFC's, a priori)
    fusion_lam: float = 0.6  # FPFC's lambda
    sparsity_penalty: str = "scad"  # P_2 on each entry: scad | mcp | l1
    sparsity_lam: float = 0.05
    a: float = 3.7  # SCAD's a (MCP's gamma when mcp)
    rho: float = 1.0  # FPFC's
    participation: float = 1.0  # pi: each client joins a round with this probability
    local_steps: int = 10  # FPFC: 10 local epochs
    rounds: int = 200
    cluster_tol: float = 0.1  # ||theta|| below it joins a pair (FPFC)
    seed: int = 0
    init: str = "nonfed"  # nonfed (each client's own fit) | zero (module docstring)

    def check(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"rowfed.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.init not in INITS:
            raise ValueError(f"rowfed.init must be one of {INITS}, got {self.init!r}")
        if not 0 < self.participation <= 1:
            raise ValueError(f"rowfed.participation must be in (0, 1], got "
                             f"{self.participation}")
        if self.rho <= 0 or self.local_steps < 1 or self.rounds < 0:
            raise ValueError("rowfed: rho > 0, local_steps >= 1 and rounds >= 0 needed")
