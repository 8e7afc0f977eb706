"""What the personalised exchanges FedPHP and DBE read of a detector's module: its
``representation`` part (the submodule whose output is the representation; FedDyMem's
projection) and, for DBE, the ``shift`` buffer the module adds to that output."""

from __future__ import annotations

import torch
from torch import nn

from fedad.errors import ConfigError


def representation_part(detector, exchange: str, shift: bool = False) -> nn.Module:
    """The module's representation part; raises :class:`~fedad.errors.ConfigError` naming
    the exchange and detector when the module has none (or, with ``shift``, no ``shift``
    buffer)."""
    module = detector.module()
    part = getattr(module, "representation", None)
    if not isinstance(part, nn.Module):
        raise ConfigError(f"exchange={exchange} acts on a module's representation: detector="
                          f"{detector.name}'s {type(module).__name__} has no `representation` "
                          "part")
    if shift and not isinstance(getattr(module, "shift", None), torch.Tensor):
        raise ConfigError(f"exchange={exchange} trains a per-site bias of the representation: "
                          f"detector={detector.name}'s {type(module).__name__} has no `shift`")
    return part


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

    def last(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.output is None:
            raise RuntimeError("no forward through the representation since the last step")
        return self.input, self.output
