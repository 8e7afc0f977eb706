"""The fedad ServerApp (Flower Message API): one bank strategy for every detector
(:mod:`server.bank`), or the weight-exchanging baselines (:mod:`server.baselines`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedad.baselines.client import initial_weights
from fedad.detectors.registry import exchanges_weights, label, resolve
from fedad.features import feature_channels
from fedad.progress import setup_logging
from fedad.report import write_run
from fedad.runconfig import from_flat
from fedad.site import save_summary
from server.bank import BankStrategy
from server.baselines import WeightStrategy
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
    cfg = resolve(from_flat(context.run_config))
    out = run_dir(cfg.output_dir, context.run_id)
    log.info("run %s (%s): results in %s", context.run_id, label(cfg), out)
    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_nodes)
    initial = None
    if exchanges_weights(cfg):
        strategy: BankStrategy | WeightStrategy = WeightStrategy(cfg, nodes)
        if cfg.method != "local":
            weights = initial_weights(feature_channels(cfg.backbone), cfg)
            initial = ArrayRecord(torch_state_dict=weights)
    else:
        strategy = BankStrategy(cfg, nodes)

    def save(_record: dict) -> None:
        extra = {"rejected": strategy.rejected,
                 "rejected_per_client": strategy.rejected_per_client, "method": cfg.method,
                 "detector": cfg.detector, "label": label(cfg)}
        if isinstance(strategy, BankStrategy):
            extra["notes"] = strategy.notes
        if isinstance(strategy, WeightStrategy):
            extra["received_keys"] = [strategy.last_keys] if strategy.last_keys else []
        write_run(out, cfg, strategy.history, extra)

    strategy.start(grid, initial, evaluate_config=ConfigRecord({"out": str(out)}),
                   on_round=save)
    if isinstance(strategy, BankStrategy) and strategy.global_summary is not None:
        save_summary(out, strategy.global_summary)
        if "bank" in strategy.global_summary:
            np.save(out / "global_bank.npy", strategy.global_summary["bank"])
    save({})
    log.info("run %s finished: %s", context.run_id, out / "summary.md")
