"""The fedad ServerApp (Flower Message API): ``method`` picks FedDyMem's bank aggregation
or a weight-exchanging baseline."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedad.baselines.client import METHODS as BASELINES
from fedad.baselines.client import initial_weights
from fedad.errors import ConfigError
from fedad.features import feature_channels
from fedad.progress import setup_logging
from fedad.report import write_run
from fedad.runconfig import from_flat
from server.baselines import WeightStrategy
from server.feddymem import FedDyMemStrategy
from server.transport import wait_for_nodes

METHODS = ("feddymem", *BASELINES)

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
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_nodes)
    initial = None
    if cfg.method == "feddymem":
        strategy = FedDyMemStrategy(cfg, nodes)
    else:
        strategy = WeightStrategy(cfg, nodes)
        if cfg.method != "local":
            weights = initial_weights(feature_channels(cfg.backbone), cfg)
            initial = ArrayRecord(torch_state_dict=weights)

    def save(_record: dict) -> None:
        extra = {"rejected": strategy.rejected, "method": cfg.method}
        if isinstance(strategy, WeightStrategy):
            extra["received_keys"] = [strategy.last_keys] if strategy.last_keys else []
        write_run(out, cfg, strategy.history, extra)

    final = strategy.start(grid, initial, evaluate_config=ConfigRecord({"out": str(out)}),
                           on_round=save)
    if cfg.method == "feddymem":
        np.save(out / "global_bank.npy", next(iter(final.values())).numpy())
    save({})
    log.info("run %s finished: %s", context.run_id, out / "summary.md")
