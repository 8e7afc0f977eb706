"""Checkpoints for crash and exact resume (no Flower here).

* the **server** writes ``<run dir>/checkpoint.pt`` after every round: the round, the global
  state (bank or weights), the strategy's own state (SCAFFOLD's control variate, the
  reference shapes, the log of rejections), the history, the RNG states and the run config;
* each **client** writes ``<run dir>/site-<id>/checkpoint-<round>.pt`` after it trained in a
  round: what lives in Flower's ``context.state`` (FedDyMem's head and Adam moments, a
  baseline's model and control variate). It keeps the last two rounds, since a client may
  have trained a round the server never checkpointed.

Every file is written to a temporary name and renamed, so a kill at any moment leaves the
previous checkpoint intact. ``resume=<run dir>`` continues a run from its checkpoint: the
server restores its state and tells the clients the round to restore (a fresh process has an
empty ``context.state``), so the resumed run reaches the metrics an uninterrupted run with
the same seed reaches.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedad.errors import ConfigError

SERVER_FILE = "checkpoint.pt"
# run-config keys a resumed run may change (how to run, not what is computed)
OPERATIONAL = ("resume", "output_dir", "wait_for_nodes", "round_timeout", "pending_timeout",
               "device", "num_workers", "examples", "backbone.cache", "backbone.cache_dir",
               "faults", "min_clients")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``path`` (readers never see a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.random.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])


def save_server(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write the server's checkpoint (``state`` must hold ``round``)."""
    payload = {**state, "rng": rng_state()}
    return atomic_write(Path(run_dir) / SERVER_FILE, lambda p: torch.save(payload, p))


def load_server(run_dir: str | Path) -> dict[str, Any]:
    """The server's checkpoint of ``run_dir``.

    Raises:
        ConfigError: no checkpoint there, or an unreadable one, naming the file.
    """
    path = Path(run_dir).expanduser() / SERVER_FILE
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path} (a run writes it after its first "
                          "round; pass the run's folder, run-<id>)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"resume: {path} is unreadable ({type(exc).__name__}: {exc})") from exc


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any],
                   defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Keys of the flat run config whose values differ between the checkpointed run and the
    resuming one, leaving out :data:`OPERATIONAL` keys. A key the checkpointed config
    lacks (a field added since the run was written) counts as its value in ``defaults``."""
    defaults = defaults or {}
    keys = (set(saved) | set(now)) - set(OPERATIONAL)
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != now.get(k))


def client_file(run_dir: str | Path, site: int, rnd: int) -> Path:
    return Path(run_dir) / f"site-{site}" / f"checkpoint-{rnd}.pt"


def save_client(run_dir: str | Path, site: int, rnd: int,
                state: Mapping[str, torch.Tensor]) -> Path:
    """Write a client's state after round ``rnd``; keep only this round and the one before."""
    path = atomic_write(client_file(run_dir, site, rnd),
                        lambda p: torch.save(dict(state), p))
    for old in path.parent.glob("checkpoint-*.pt"):
        try:
            r = int(old.stem.split("-", 1)[1])
        except ValueError:
            continue
        if r < rnd - 1:
            old.unlink(missing_ok=True)
    return path


def load_client(run_dir: str | Path, site: int, rnd: int) -> dict[str, torch.Tensor]:
    """A client's state after round ``rnd``.

    Raises:
        ConfigError: there is none, naming the client, the round and the file.
    """
    path = client_file(run_dir, site, rnd)
    if not path.is_file():
        raise ConfigError(f"resume: site {site} has no checkpoint of round {rnd} ({path}); "
                          "a client's state is kept where the run's folder is on its host")
    return torch.load(path, map_location="cpu", weights_only=True)
