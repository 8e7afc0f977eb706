"""A benchmark row as one in-process run of the engine (the same sites, messages and
aggregation as a Flower run, :mod:`fedad.federation.in_process`) in its own folder, resumed
from its last checkpointed round when the script is run again, and read back when finished."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.federation.checkpoint import load_server
from fedad.federation.in_process import InProcess
from fedad.federation.run import federate, run_folder
from partitions import partition_nodes


def finished(folder: Path, cfg: RunConfig) -> bool:
    """Whether ``folder`` holds ``cfg``'s run with its last round evaluated."""
    path = folder / "rounds.json"
    if not path.is_file():
        return False
    rounds = json.loads(path.read_text()).get("rounds", [])
    return bool(rounds) and rounds[-1]["round"] == cfg.train.rounds and bool(
        rounds[-1].get("evaluate"))


def run_row(cfg: RunConfig, folder: Path) -> dict:
    """The row's ``rounds.json`` (its run resumed from the checkpoint, or read back when
    finished)."""
    if not finished(folder, cfg):
        ckpt = None
        try:
            load_server(folder)
        except ConfigError:  # nothing checkpointed yet: from the start
            pass
        else:
            cfg = copy.deepcopy(cfg)
            cfg.resume = str(folder)
            folder, ckpt = run_folder(cfg, folder.parent, folder.name)
        transport = InProcess(cfg, partition_nodes(cfg))
        federate(cfg, transport, transport.keys, folder, ckpt)
    return json.loads((folder / "rounds.json").read_text())
