"""An optimiser's state (Adam's moments and step counts) as a flat ``{name: tensor}`` dict
and back: what a trained detector keeps between rounds (Flower's ``context.state``, a
site's checkpoint), so a resumed run steps exactly as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def optimizer_arrays(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> dict[
        str, torch.Tensor]:
    """``{prefix<param index>.<name>: tensor}`` of every per-parameter state entry."""
    out = {}
    for pid, st in optimizer.state_dict()["state"].items():
        for name, value in st.items():
            out[f"{prefix}{pid}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
    return out


def load_optimizer_arrays(optimizer: torch.optim.Optimizer,
                          arrays: Mapping[str, torch.Tensor], prefix: str = "optim.") -> None:
    """Restore what :func:`optimizer_arrays` returned (entries without ``prefix`` are
    ignored; none at all leaves a fresh optimiser)."""
    opt = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in arrays.items():
        if k.startswith(prefix):
            pid, name = k[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    opt["state"] = state
    optimizer.load_state_dict(opt)
