"""The toy autoencoder's own config section (``sections.toyae``), beside its code: no
line of fedad/config/schema.py knows it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ToyAEConfig:
    hidden: int = 8  # channels of the code
    lr: float = 1e-3  # Adam's learning rate (train.optimizer is not consulted)
