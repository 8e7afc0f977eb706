"""Device selection: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from fedad.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a ``torch.device``.

    Raises:
        ConfigError: CUDA was asked for explicitly but is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: unknown device {name!r} (use auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available; use device=auto")
    return device
