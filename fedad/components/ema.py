"""An exponential moving average of a module's weights that travels with them: the shadow
is a submodule of buffers (``<module>.ema``), so a weight exchange moves it beside the
weights (FedAvg's mean of the sites' shadows is the shadow of the mean trajectory: both
are linear), no optimiser sees it, and a site scores or samples with it inside
:func:`shadow_weights`. Guided diffusion's ``update_ema``: ``shadow = decay * shadow +
(1 - decay) * weights`` after each optimiser step, on every floating-point entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

EMA = "ema"  # the shadow's attribute, and its state-dict prefix under the module


class Shadow(nn.Module):
    """The moving average of ``module``'s state entries, one buffer each (``.`` -> ``__``)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        for k, v in _weights(module).items():
            self.register_buffer(k.replace(".", "__"), v.detach().clone())

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in _weights(module).items():
            s = getattr(self, k.replace(".", "__"))
            if s.is_floating_point():
                s.mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                s.copy_(v)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.startswith(f"{EMA}.")}


def attach(module: nn.Module, decay: float) -> nn.Module:
    """``module`` with a shadow of its weights (``decay`` 0: none); returns ``module``."""
    if decay > 0:
        module.add_module(EMA, Shadow(module, decay))
    return module


def update(module: nn.Module) -> None:
    """After an optimiser step: the shadow follows the weights (nothing without one)."""
    shadow = dict(module.named_children()).get(EMA)
    if isinstance(shadow, Shadow):
        shadow.update(module)


@contextmanager
def shadow_weights(module: nn.Module) -> Iterator[nn.Module]:
    """Inside: ``module`` holds its shadow's weights (its own without one); restored
    after."""
    shadow = dict(module.named_children()).get(EMA)
    if not isinstance(shadow, Shadow):
        yield module
        return
    own = {k: v.detach().clone() for k, v in _weights(module).items()}
    with torch.no_grad():
        module.load_state_dict({**{k: getattr(shadow, k.replace(".", "__")) for k in own},
                                **{f"{EMA}.{k}": v for k, v in shadow.state_dict().items()}})
    try:
        yield module
    finally:
        with torch.no_grad():
            module.load_state_dict({**own, **{f"{EMA}.{k}": v
                                              for k, v in shadow.state_dict().items()}})
