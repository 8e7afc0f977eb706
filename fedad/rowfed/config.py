"""RowFed's settings (:class:`RowFedConfig`): the fusion and sparsity penalties, ADMM's
``rho``, participation and the start; shared by the solver (:mod:`fedad.rowfed.admm`), each
client's own fit (:mod:`fedad.rowfed.local`) and the baselines."""

from __future__ import annotations

from dataclasses import dataclass

from fedad.config.schema import RowFedSettings

FUSIONS = ("row", "matrix", "entry")
INITS = ("nonfed", "zero")


@dataclass
class RowFedConfig(RowFedSettings):
    """The solver run alone (benchmarks, baselines): the fusion and sparsity of
    :class:`~fedad.config.schema.RowFedSettings`, with their one set of defaults, plus
    what the exchange takes from ``train.*``."""

    participation: float = 1.0  # pi: each client joins a round with this probability
    local_steps: int = 10  # FPFC: 10 local epochs
    rounds: int = 200
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


FPFC = {"fusion_lam": 0.6, "sparsity_lam": 0.05}  # FPFC's values at its synthetic scale


def fpfc(**changes) -> RowFedConfig:
    """The solver with FPFC's synthetic-scale penalties (``fusion_lam=0.6``,
    ``sparsity_lam=0.05``; the RowFed benchmark's design), ``changes`` on top."""
    return RowFedConfig(**{**FPFC, **changes})
