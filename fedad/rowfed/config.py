"""RowFed's settings, its one config: :class:`RowFedSettings` (the fusion and sparsity
penalties and ADMM's ``rho``, which the exchange's section
:class:`fedad.exchanges.config.RowFedExchangeConfig` extends) and :class:`RowFedConfig`
(the solver run alone: participation and the start too), shared by the solver
(:mod:`fedad.rowfed.admm`), each client's own fit (:mod:`fedad.rowfed.local`) and the
baselines. Plain dataclasses: layer 0 of the package."""

from __future__ import annotations

from dataclasses import dataclass

from fedad.config.fields import choice


@dataclass
class RowFedSettings:
    """RowFed's fusion and sparsity (seed 000's second abstract, on FPFC's linearised
    ADMM): the one set of its settings and their defaults, for the exchange
    (:class:`fedad.exchanges.config.RowFedExchangeConfig`) and for the solver run alone
    (:class:`RowFedConfig`, which adds its own rounds and steps).
    FPFC's synthetic-scale values (``fusion_lam=0.6``, ``sparsity_lam=0.05``) are a
    preset, :func:`fpfc`."""

    fusion: str = choice("row", "matrix", "entry")  # SROF's rows | the baselines' groups
    fusion_penalty: str = choice("scad", "mcp", "l1")
    # a priori: a tenth of an identity projection row's norm (FPFC's 0.6 is for its
    # synthetic scale; a benchmark chooses on validation)
    fusion_lam: float = 0.1
    sparsity_penalty: str = choice("scad", "mcp", "l1")
    sparsity_lam: float = 0.0  # within-row sparsity (0: none, a priori for a head)
    a: float = 3.7  # SCAD's a (MCP's gamma)
    rho: float = 1.0  # FPFC's
    cluster_tol: float = 0.1  # ||theta_j|| below it: two sites share row j (FPFC's)


FUSIONS = ("row", "matrix", "entry")
INITS = ("nonfed", "zero")


@dataclass
class RowFedConfig(RowFedSettings):
    """The solver run alone (benchmarks, baselines): the fusion and sparsity of
    :class:`RowFedSettings`, with their one set of defaults, plus
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
