"""Arithmetic on state dicts shared by the weight exchanges: checking that states can be
combined, casting back to each entry's dtype, and FedAvg's weighted mean (McMahan et al.,
2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data", Alg. 1):
``w <- sum_k n_k w_k / sum_k n_k``.

States are plain dicts of tensors keyed by parameter/buffer name (``module.state_dict()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fedad.errors import FedadError


class StateError(FedadError, ValueError):
    """State dicts that cannot be combined: no states, different keys, shapes or weights."""


def cast_like(value: Tensor, like: Tensor) -> Tensor:
    """``value`` (any float dtype) in ``like``'s dtype and device; integer and bool dtypes
    are rounded to the nearest integer first (so counters stay exact and bools take the
    weighted majority)."""
    if not (like.is_floating_point() or like.is_complex()):
        value = torch.round(value)
    return value.to(device=like.device, dtype=like.dtype)


def check_compatible(states: Sequence[Mapping[str, Tensor]], what: str = "state") -> list[str]:
    """The keys of ``states[0]`` (in order) after checking every state has exactly those keys
    with the same shapes; raises :class:`StateError` naming the offending key otherwise."""
    if len(states) == 0:
        raise StateError(f"no {what}s to combine")
    keys = list(states[0].keys())
    ref = states[0]
    for i, state in enumerate(states[1:], start=1):
        missing = [k for k in keys if k not in state]
        extra = [k for k in state if k not in ref]
        if missing:
            raise StateError(f"{what} {i} lacks key {missing[0]!r} present in {what} 0")
        if extra:
            raise StateError(f"{what} {i} has key {extra[0]!r} absent from {what} 0")
        for k in keys:
            if tuple(state[k].shape) != tuple(ref[k].shape):
                raise StateError(f"key {k!r}: {what} {i} has shape {tuple(state[k].shape)}, "
                                 f"{what} 0 has {tuple(ref[k].shape)}")
    return keys


def weighted_mean(states: Sequence[Mapping[str, Tensor]],
                  weights: Sequence[float]) -> dict[str, Tensor]:
    """FedAvg's weighted mean ``sum_k n_k w_k / sum_k n_k`` of each entry of ``states``.

    ``weights`` are the ``n_k`` (typically local sample counts); each must be finite and
    non-negative and their sum positive. The sums are taken in float64 on ``states[0]``'s
    device, then cast back to each entry's dtype; integer and bool buffers (e.g. BatchNorm's
    ``num_batches_tracked``) get the weighted mean *rounded to the nearest integer*. The
    result is detached and keyed in ``states[0]``'s order.

    Raises:
        StateError (a ValueError): no states, ``len(weights) != len(states)``, a bad weight,
            a non-positive total weight, or a key or shape that differs between states.
    """
    keys = check_compatible(states)
    if len(weights) != len(states):
        raise StateError(f"{len(states)} states but {len(weights)} weights")
    ws = [float(w) for w in weights]
    for i, w in enumerate(ws):
        if not math.isfinite(w) or w < 0:
            raise StateError(f"weight {i} is {w}; weights must be finite and >= 0")
    total = math.fsum(ws)
    if total <= 0:
        raise StateError(f"total weight is {total}; it must be positive")
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for k in keys:
            ref = states[0][k]
            acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
            for state, w in zip(states, ws, strict=True):
                if w:
                    acc += state[k].detach().to(device=ref.device, dtype=torch.float64) * w
            out[k] = cast_like(acc / total, ref)
    return out


def flat_update(weights: dict[str, np.ndarray], reference: dict[str, np.ndarray]
                ) -> np.ndarray:
    """``w - w_ref`` over the float arrays both hold, flattened in key order: what the
    outlier rule compares for weight exchange."""
    keys = sorted(k for k in weights if k in reference
                  and np.issubdtype(np.asarray(weights[k]).dtype, np.floating))
    if not keys:
        return np.zeros(0)
    return np.concatenate([(np.asarray(weights[k], dtype=np.float64)
                            - np.asarray(reference[k], dtype=np.float64)).ravel() for k in keys])
