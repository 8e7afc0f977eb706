"""``fedad-sim``: compose a run with Hydra and launch the Flower app through Flower's own
simulation runtime (``flwr run`` against a SuperLink started for this run).

    fedad-sim                                        # FedDyMem, textures, 5 clients, alpha 0.1
    fedad-sim partition.alpha=0.5 train.local_epochs=3 num_clients=5 \\
        dataset=mtd dataset.root=/abs/path/mtd
    fedad-sim -m partition.alpha=0.1,1.0 train.seed=0,1,2   # a sweep

The Hydra config and ``flwr run``'s run config resolve to the same :class:`RunConfig`: this
command writes the resolved values to ``run_config.toml`` and hands that file to
``flwr run --run-config``. Results land in ``<hydra run dir>/run-<run id>/``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedad.cli.flwr_run import flwr_run, run_status
from fedad.cli.processes import exit_on_sigterm
from fedad.cli.superlink import CONNECTION, LocalSuperLink
from fedad.config import RunConfig
from fedad.data.factory import build_dataset
from fedad.errors import ConfigError, FedadError
from fedad.progress import setup_logging
from fedad.runconfig import to_flat, toml_value

log = logging.getLogger("fedad")
PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class SimConfig(RunConfig):
    """RunConfig plus how the simulated federation is resourced (not sent to the app)."""

    client_cpus: int = 1
    client_gpus: float | None = None  # None: share one GPU among the clients if CUDA, else 0
    app_dir: str = str(PROJECT)


ConfigStore.instance().store(name="run_schema", node=SimConfig)


def run_config_of(sim: SimConfig) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: getattr(sim, k) for k in names})


def write_run_config(cfg: RunConfig, path: Path) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in to_flat(cfg).items()))
    return path


def federation_config(sim: SimConfig) -> str:
    gpus = sim.client_gpus
    if gpus is None:
        gpus = round(1.0 / sim.num_clients, 4) if torch.cuda.is_available() else 0.0
    return (f"num-supernodes={sim.num_clients} client-resources-num-cpus={sim.client_cpus} "
            f"client-resources-num-gpus={gpus}")


def show_partition(cfg: RunConfig, out: Path) -> None:
    """Print and plot samples per client per product type (the paper's Fig. 5) with the
    very function the clients use, so an impossible split fails here, with its fix named,
    before Flower starts."""
    from partitions import counts_table, partition_indices, plot_counts

    types = build_dataset(cfg.dataset, "train").product_types
    parts = partition_indices(types, cfg.num_clients, cfg.partition)
    print(f"Training samples per client ({cfg.partition.method}, alpha {cfg.partition.alpha},"
          f" seed {cfg.partition.seed}):")
    print(counts_table(types, parts))
    plot_counts(types, parts, out / "partition.png",
                title=f"{cfg.dataset.name}: {cfg.partition.method} "
                      f"(alpha {cfg.partition.alpha}), {cfg.num_clients} clients")


def launch(sim: SimConfig, out: Path) -> int:
    """Run the app once; 0 when Flower reports the run ``finished:completed``."""
    app_dir = Path(sim.app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"app_dir: no pyproject.toml in {app_dir} (fedad-sim runs the app "
                          "from its source tree; install with pip install -e <repo>)")
    cfg = run_config_of(sim)
    cfg.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    toml = write_run_config(cfg, out / "run_config.toml")
    show_partition(cfg, out)
    with LocalSuperLink(out / ".flwr", out / "superlink.log") as link:
        run_id = flwr_run(app_dir, CONNECTION, toml, link.env,
                          ["--federation-config", federation_config(sim)])
        if run_id is None:
            return 1
        status = run_status(run_id, CONNECTION, link.env)
    result = out / f"run-{run_id}"
    if status != "finished:completed":
        log.error("run %s ended as %s; see %s and %s", run_id, status, out / "superlink.log",
                  result)
        return 1
    log.info("run %s completed; results: %s", run_id, result)
    summary = result / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    return 0


@hydra.main(version_base=None, config_path=str(PROJECT / "conf"), config_name="config")
def _main(dcfg: DictConfig) -> None:
    setup_logging()
    sim: SimConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        code = launch(sim, out)
    except FedadError as exc:
        log.error("fedad-sim: %s", exc)
        code = 2
    if code:
        sys.exit(code)


def main() -> None:
    exit_on_sigterm()
    _main()
