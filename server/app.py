"""The fedad ServerApp (Flower Message API): one bank strategy for every detector
(:mod:`server.bank`), or the weight-exchanging baselines (:mod:`server.baselines`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedad.baselines.client import initial_weights
from fedad.checkpoint import config_changes, load_server, save_server, set_rng_state
from fedad.detectors.registry import exchanges_weights, label, resolve
from fedad.errors import ConfigError
from fedad.features import feature_channels
from fedad.progress import setup_logging
from fedad.report import write_run
from fedad.runconfig import from_flat, to_flat
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
    ckpt = None
    if cfg.resume:  # go on in the killed run's folder, from its checkpoint
        out = Path(cfg.resume).expanduser().resolve()
        ckpt = load_server(out)
        changed = config_changes(ckpt["config"], to_flat(cfg))
        if changed:
            raise ConfigError(f"resume: the run config differs from the checkpointed run's in "
                              f"{', '.join(changed)}; resume with the same settings")
        log.info("run %s resumes %s after round %d", context.run_id, out, ckpt["round"])
    else:
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
                 "rejected_per_client": strategy.rejected_per_client,
                 "robust": strategy.robust_log, "skipped_files": strategy.skipped_files,
                 "method": cfg.method,
                 "detector": cfg.detector, "label": label(cfg)}
        if isinstance(strategy, BankStrategy):
            extra["notes"] = strategy.notes
        if isinstance(strategy, WeightStrategy):
            extra["received_keys"] = [strategy.last_keys] if strategy.last_keys else []
        write_run(out, cfg, strategy.history, extra)

    def save_round(record: dict) -> None:  # results, then the checkpoint (the commit point)
        save(record)
        save_server(out, {**strategy.checkpoint_state(), "config": to_flat(cfg)})

    if ckpt is not None:
        strategy.restore(ckpt)
        set_rng_state(ckpt["rng"])
    where = ConfigRecord({"out": str(out)})
    strategy.start(grid, initial, train_config=where, evaluate_config=where,
                   on_round=save_round)
    if isinstance(strategy, BankStrategy) and strategy.global_summary is not None:
        save_summary(out, strategy.global_summary)
        if "bank" in strategy.global_summary:
            np.save(out / "global_bank.npy", strategy.global_summary["bank"])
    save({})
    log.info("run %s finished: %s", context.run_id, out / "summary.md")
