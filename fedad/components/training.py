"""What every trained network's optimiser steps share (no Flower here): the settings of one
part's optimiser (:class:`OptimSpec`), a module's named parts (:class:`Part`), what an
exchange changes in the steps (:class:`TrainHooks`) and the one step (:func:`step`).

A trained detector names the parts of its module (a state-dict key prefix each) and the
optimiser each part trains with (:class:`OptimSpec`, from the detector's own config). An
exchange may replace a part's optimiser (SCAFFOLD: plain SGD at its own learning rate,
:mod:`fedad.exchanges.scaffold`) through :attr:`TrainHooks.optimizer`; the
detector builds every optimiser with :func:`build_optimizer` from the resolved spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from fedad.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class OptimSpec:
    """One part's optimiser: ``name`` (adam | adamw | sgd, no momentum), learning rate and
    weight decay."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def check(self, where: str) -> OptimSpec:
        """Raises :class:`~fedad.errors.ConfigError` naming ``where`` for an unknown
        optimiser or a learning rate that is not positive and finite."""
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"{where}: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.name!r}")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise ConfigError(f"{where}: the learning rate must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{where}: weight decay must be >= 0, got {self.weight_decay}")
        return self


@dataclass(frozen=True)
class Part:
    """A named part of a trained module: the state-dict keys under ``prefix`` (``""``: all)
    and the optimiser they train with."""

    prefix: str
    optim: OptimSpec


def part_of(key: str, parts: Mapping[str, Part]) -> str:
    """The name of the part that holds state-dict ``key`` (the longest matching prefix).

    Raises:
        KeyError: no part holds it.
    """
    best = max((p for p in parts.items() if key.startswith(p[1].prefix)),
               key=lambda p: len(p[1].prefix), default=None)
    if best is None:
        raise KeyError(f"no part of the module holds {key!r} (parts: {', '.join(parts)})")
    return best[0]


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimSpec
                    ) -> torch.optim.Optimizer:
    """The optimiser ``spec`` names over ``params``."""
    spec.check("optimizer")
    params = list(params)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)


@dataclass
class TrainHooks:
    """What an exchange changes in a trained detector's optimiser steps:

    * ``objective(module, loss)``: the loss the step minimises, from the detector's own
      (FedProx adds its proximal term, FedPHP mixes in its MMD);
    * ``after_backward(module)``: may change the gradients before the step (SCAFFOLD's
      correction);
    * ``after_step(module)``: may change the weights after it (a proximal step, RowFed's
      sparsity; APPLE's personalisation);
    * ``optimizer(part, spec)``: the optimiser a part trains with, given the detector's own
      (SCAFFOLD: plain SGD at its learning rate).

    A detector's training loop builds its optimisers through :meth:`spec` and steps
    through :func:`step`.
    """

    objective: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None
    after_backward: Callable[[torch.nn.Module], None] | None = None
    after_step: Callable[[torch.nn.Module], None] | None = None
    optimizer: Callable[[str, OptimSpec], OptimSpec] | None = None


def resolved_spec(hooks: TrainHooks | None, part: str, own: OptimSpec) -> OptimSpec:
    """The optimiser part ``part`` trains with: the exchange's rule applied to ``own``."""
    if hooks is None or hooks.optimizer is None:
        return own
    return hooks.optimizer(part, own)


def step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
         hooks: TrainHooks | None = None) -> None:
    """One optimiser step on ``loss`` with the exchange's ``hooks`` applied."""
    if hooks is not None and hooks.objective is not None:
        loss = hooks.objective(module, loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if hooks is not None and hooks.after_backward is not None:
        hooks.after_backward(module)
    optimizer.step()
    if hooks is not None and hooks.after_step is not None:
        with torch.no_grad():
            hooks.after_step(module)
