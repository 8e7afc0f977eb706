"""What the personalised exchanges FedPHP and DBE read of a detector's module: its
representation part (:class:`~fedad.detectors.capabilities.Represents`: the submodule whose
output is the representation; FedDyMem's projection) and where that part sits in a copy of
the module."""

from __future__ import annotations

import torch
from torch import nn

from fedad.detectors.capabilities import Represents


def part_name(detector: Represents) -> str:
    """The representation part's name in the module (``""``: the module itself), what
    finds the same part in a copy of the module.

    Raises:
        ValueError: the representation is not a submodule of the module.
    """
    part = detector.representation()
    for name, sub in detector.module().named_modules():
        if sub is part:
            return name
    raise ValueError(f"detector={detector.name}: its representation is not a submodule of "
                     "its module")


def rows(rep: torch.Tensor) -> torch.Tensor:
    """A representation ``(B, C, ...)`` as ``(B * positions, C)`` rows."""
    return rep.flatten(2).transpose(1, 2).reshape(-1, rep.shape[1]) if rep.dim() > 2 else rep


class Capture:
    """The last forward through ``part``: its input and output (a forward hook, removed on
    leaving the ``with`` block)."""

    def __init__(self, part: nn.Module) -> None:
        self.part = part
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output) -> None:
        self.input, self.output = inputs[0], output

    def __enter__(self) -> Capture:
        self._handle = self.part.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self.input = self.output = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last forward's input and output, then forgotten; ``None`` when the step ran
        no forward through the part (a phase that trains another part: asymst's DDPM)."""
        got = None if self.output is None else (self.input, self.output)
        self.input = self.output = None
        return got
