"""Training measured in optimiser steps (no Flower here): a trained detector's budget is a
list of phases, each a number of optimiser steps (:class:`Stage`); a site spends them
``local_steps`` per round (:func:`plan`), so a federated run takes as many steps as a
centralized one in as many rounds, and federated minus centralized measures federation,
not budget. The learning rate follows a schedule over each phase's steps (:func:`factor`:
linear warm-up, then cosine or step decay), applied step by step (:class:`Scheduled`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedad.errors import ConfigError

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Stage:
    """One phase of training: the part it trains (``phase``) and its optimiser steps."""

    phase: str
    steps: int


@dataclass(frozen=True)
class RoundPlan:
    """What one round trains: its phase, the index of its first step in the phase, the
    steps it takes and the phase's total."""

    phase: str
    first: int
    steps: int
    total: int


def plan(stages: Sequence[Stage], local_steps: int) -> list[RoundPlan]:
    """The rounds that spend ``stages`` ``local_steps`` at a time (a phase's last round
    takes what is left; a phase of 0 steps has no round)."""
    if local_steps < 1:
        raise ConfigError(f"train.local_steps must be >= 1, got {local_steps}")
    out = []
    for s in stages:
        if s.steps < 0:
            raise ConfigError(f"the {s.phase} phase's steps must be >= 0, got {s.steps}")
        for first in range(0, s.steps, local_steps):
            out.append(RoundPlan(s.phase, first, min(local_steps, s.steps - first), s.steps))
    return out


def factor(step: int, total: int, warmup: float, kind: str) -> float:
    """The learning rate's multiplier at ``step`` (0-based) of ``total``: a linear warm-up
    over the first ``warmup`` fraction of the steps (from ``1 / warm-up steps``), then
    ``cosine`` (towards 0 at the last step, Loshchilov & Hutter), ``step`` (x0.1 at 80% of the
    steps and again at 90%, the classic schedule) or ``constant``."""
    if kind not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    n_warm = int(round(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    if kind == "constant" or total <= n_warm + 1:
        return 1.0
    p = (step - n_warm) / (total - n_warm)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 0.01 if p >= 0.9 else 0.1 if p >= 0.8 else 1.0


class Scheduled:
    """An optimiser whose learning rate is ``base_lr`` times :func:`factor`: call
    :meth:`at` before each step with the step's index in its phase."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total: int,
                 warmup: float, kind: str) -> None:
        self.optimizer, self.base_lr = optimizer, base_lr
        self.total, self.warmup, self.kind = total, warmup, kind

    def at(self, step: int) -> float:
        f = factor(step, self.total, self.warmup, self.kind)
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr * f
        return f


def mean_factor(rp: RoundPlan, warmup: float, kind: str) -> float:
    """The mean learning-rate multiplier over round ``rp``'s steps (SCAFFOLD's
    ``K * eta_l`` under a schedule is the sum of the rates it stepped)."""
    if rp.steps < 1:
        return 1.0
    return sum(factor(rp.first + i, rp.total, warmup, kind) for i in range(rp.steps)) / rp.steps
