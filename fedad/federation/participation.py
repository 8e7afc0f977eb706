"""Partial participation: which sites train in a round (``train.participation``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def participants(keys: Sequence[int], probability: float, seed: int, round_t: int,
                 at_least: int = 1) -> list[int]:
    """The sites of ``keys`` that train in round ``round_t``: each with ``probability``,
    independently, from a draw seeded by ``seed`` and the round (so a resumed run draws the
    same); when fewer than ``at_least`` are drawn, the ``at_least`` of the smallest draws.
    Sorted as ``keys`` are."""
    keys = list(keys)
    if not 0 < probability <= 1:
        raise ValueError(f"train.participation must be in (0, 1], got {probability}")
    if probability >= 1 or not keys:
        return keys
    draws = np.random.default_rng([int(seed), int(round_t)]).random(len(keys))
    chosen = draws < probability
    need = min(max(int(at_least), 1), len(keys))
    if chosen.sum() < need:
        chosen[np.argsort(draws)[:need]] = True
    return [k for k, c in zip(keys, chosen, strict=True) if c]
