"""Numeric config fields and the values they can take: :func:`check_ranges` refuses an
impossible value (``train.rounds=-1``, ``train.batch_size=0``) up front, naming the field,
the value and what it must be, before any process starts; and the keys a run config has,
so an override of a key it does not have is answered with the key meant
(:func:`unknown_key`), never with Hydra's ``+key`` hint (the schema is closed)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from fedad.errors import ConfigError

# (dotted key, test, what it must be): fields a user sets often whose impossible values
# would otherwise run and "complete" with nothing in them, or fail far from the cause
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("num_clients", lambda v: v >= 1, ">= 1"),
    ("train.rounds", lambda v: v >= 0, ">= 0 (0: the detector's own number of rounds)"),
    ("train.local_epochs", lambda v: v >= 1, ">= 1"),
    ("train.local_steps", lambda v: v >= 0, ">= 0 (0: the budget preset's)"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: math.isfinite(v) and v > 0, "a positive number"),
    ("train.warmup", lambda v: 0 <= v < 1, "in [0, 1) (a fraction of each phase's steps)"),
    ("partition.alpha", lambda v: math.isfinite(v) and v > 0, "a positive number"),
    ("partition.min_samples", lambda v: v >= 1, ">= 1 (training images per client)"),
    ("calibration.holdout", lambda v: 0 <= v < 1, "in [0, 1) (a fraction of training images)"),
    ("calibration.quantile", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("dataset.image_size", lambda v: v == 0 or v >= 8,
     ">= 8 pixels (0: the dataset's own size)"),
    ("eval_every", lambda v: v >= 1, ">= 1 (the last round is always evaluated)"),
    ("backbone.stream_chunk", lambda v: v >= 1, ">= 1 (images read at once)"),
)

# words users bring from Flower's templates and other frameworks -> the key fedad has
ALIASES = {
    "num_rounds": "train.rounds", "num_round": "train.rounds", "rounds": "train.rounds",
    "num-server-rounds": "train.rounds", "num_server_rounds": "train.rounds",
    "epochs": "train.local_epochs", "local_epochs": "train.local_epochs",
    "local-epochs": "train.local_epochs", "lr": "train.lr", "learning_rate": "train.lr",
    "batch_size": "train.batch_size", "seed": "train.seed", "clients": "num_clients",
    "num_client": "num_clients", "num-supernodes": "num_clients", "alpha": "partition.alpha",
    "root": "dataset.root", "data": "dataset.root", "image_size": "dataset.image_size",
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any) -> Any:
    """``cfg``, after checking every field of :data:`RANGES`.

    Raises:
        ConfigError: naming every field whose value is impossible, with what it must be.
    """
    bad = []
    for key, ok, must in RANGES:
        value = _get(cfg, key)
        if not ok(value):
            bad.append(f"{key}={value!r} must be {must}")
    if bad:
        raise ConfigError("; ".join(bad))
    return cfg


def unknown_key(key: str, known: Iterable[str]) -> str | None:
    """``None`` when ``key`` is one of ``known`` (or a section of them); else the error
    line for it, with the key meant when there is a likely one."""
    known = sorted(set(known))
    sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
    if key in known or key in sections:
        return None
    meant = ALIASES.get(key)
    if meant is None or meant not in known:
        last = key.rsplit(".", 1)[-1]
        same_name = [k for k in known if k.rsplit(".", 1)[-1] == last]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        meant = (same_name or close or [None])[0]
    hint = f"; did you mean {meant}?" if meant else " (fedad-sim --cfg job lists every key)"
    return f"{key} is not a config key{hint}"
