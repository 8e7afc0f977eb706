"""The trainable FedDyMem head: projection then memory generator (Alg. 1, lines 3-4)."""

from __future__ import annotations

import torch
from torch import nn

from fedad.detectors.feddymem.config import HeadConfig
from fedad.detectors.feddymem.generator import MemoryGenerator
from fedad.detectors.feddymem.projection import Projection
from fedad.errors import ConfigError


class FedDyMemHead(nn.Module):
    """Maps fused frozen features ``(B, C, H, W)`` to memory features ``M`` of the same shape.

    The ablation switches of the paper's Table III turn the projection and the generator off;
    with both off the head is the identity (the bare memory bank of frozen features).

    What personalised exchanges read: :attr:`representation` is the part whose output is
    the head's representation (the projection: FedPHP's distillation and DBE's mean
    regularisation act on it), and the buffer ``shift`` ``(C,)`` is added to it before the
    generator (DBE's personalised representation bias; zero, so an exact no-op, unless an
    exchange trains it).
    """

    def __init__(self, channels: int, cfg: HeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or HeadConfig()
        self.channels = channels
        self.projection = (Projection(channels, batch_norm=cfg.batch_norm)
                           if cfg.projection else nn.Identity())
        self.generator = (MemoryGenerator(channels, cfg.grid_size, cfg.phi_hidden)
                          if cfg.generator else nn.Identity())
        if cfg.init == "identity":
            for part in (self.projection, self.generator):
                if not isinstance(part, nn.Identity):
                    part.identity_()
        elif cfg.init != "default":
            raise ConfigError(f"head.init must be default or identity, got {cfg.init!r}")
        self.register_buffer("shift", torch.zeros(channels))

    @property
    def representation(self) -> nn.Module:
        """The part whose output is the head's representation (before ``shift``)."""
        return self.projection

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a head saved before the shift existed has none: it was zero
        state_dict.setdefault(prefix + "shift", torch.zeros_like(self.shift))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.generator(self.projection(features) + self.shift[:, None, None])
