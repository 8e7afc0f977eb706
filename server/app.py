"""The fedad ServerApp (Flower Message API): FedDyMem's bank aggregation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedad.progress import setup_logging
from fedad.report import write_run
from fedad.runconfig import from_flat
from server.feddymem import FedDyMemStrategy
from server.transport import wait_for_nodes

log = logging.getLogger("fedad")
app = ServerApp()


def run_dir(output_dir: str, run_id: int) -> Path:
    """``<output_dir>/run-<run_id>``, absolute (a relative ``output_dir`` resolves against the
    ServerApp's working directory, which is where the SuperLink was started)."""
    return (Path(output_dir).expanduser() / f"run-{run_id}").resolve()


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    cfg = from_flat(context.run_config)
    out = run_dir(cfg.output_dir, context.run_id)
    log.info("run %s: results in %s", context.run_id, out)
    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_nodes)
    strategy = FedDyMemStrategy(cfg, nodes)

    def save(_record: dict) -> None:
        write_run(out, cfg, strategy.history, {"rejected": strategy.rejected})

    bank = strategy.start(grid, evaluate_config=ConfigRecord({"out": str(out)}), on_round=save)
    np.save(out / "global_bank.npy", next(iter(bank.values())).numpy())
    save({})
    log.info("run %s finished: %s", context.run_id, out / "summary.md")
