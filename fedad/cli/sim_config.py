"""``fedad-sim``'s config: :class:`~fedad.config.schema.RunConfig` plus how the simulated
federation is resourced (not sent to the app), registered with Hydra as ``run_schema``.
Its own module so the compose path (:mod:`fedad.cli.overrides`) and the launcher
(:mod:`fedad.cli.sim`) both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from hydra.core.config_store import ConfigStore

from fedad.config.schema import RunConfig

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class SimConfig(RunConfig):
    """RunConfig plus how the simulated federation is resourced (not sent to the app)."""

    client_cpus: int = 1
    client_gpus: float | None = None  # None: share one GPU among the clients if CUDA, else 0
    app_dir: str = str(PROJECT)
    # a running Ray cluster the simulated clients join ("<head host>:<port>", or "auto": the
    # one `ray start` started on this machine); None: Flower starts a local one per run
    ray_address: str | None = None


ConfigStore.instance().store(name="run_schema", node=SimConfig)


def run_config_of(sim: SimConfig) -> RunConfig:
    """The run config the app receives (``sim`` without its resourcing fields)."""
    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: getattr(sim, k) for k in names})
