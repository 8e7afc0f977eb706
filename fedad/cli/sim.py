"""``fedad-sim``: compose a run with Hydra and launch the Flower app through Flower's own
simulation runtime (``flwr run`` against a SuperLink started for this run).

    fedad-sim                                        # FedDyMem, textures, 5 clients, alpha 0.1
    fedad-sim partition.alpha=0.5 train.local_epochs=3 num_clients=5 \\
        dataset=mtd dataset.root=/abs/path/mtd
    fedad-sim -m partition.alpha=0.1,1.0 train.seed=0,1,2   # a sweep
    fedad-sim -m ... hydra.sweep.dir=multirun/<earlier>     # resume it: skips finished runs

The Hydra config and ``flwr run``'s run config resolve to the same :class:`RunConfig`: this
command writes the resolved values to ``run_config.toml`` and hands that file to
``flwr run --run-config``. Results land in ``<hydra run dir>/run-<run id>/``, beside
``versions.json`` (package versions, git commit) and ``status.json`` (completed or failed).
In a sweep a failed combination is recorded and the others go on; ``fedad-report
<sweep dir>`` turns the folder into one table.

The console shows fedad's lines only; Flower's and Ray's go to ``flower.log``, third-party
INFO to ``sim.log`` (beside fedad's lines), both in the run's folder. ``fedad-sim -v``
shows everything on the console too.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedad.cli.crash import processes_of
from fedad.cli.flwr_run import flwr_run, run_record
from fedad.cli.processes import exit_on_sigterm
from fedad.cli.sim_config import PROJECT, SimConfig, run_config_of
from fedad.cli.superlink import CONNECTION, LocalSuperLink
from fedad.config.flat import toml_table
from fedad.config.schema import RunConfig
from fedad.data.factory import build_dataset
from fedad.data.screen import screen_local
from fedad.errors import ConfigError, FedadError
from fedad.evaluation.run_status import (
    FAILURE,
    completed_with,
    read_failure,
    write_failure,
    write_status,
)
from fedad.features.stream import remove_stale, stream_base
from fedad.federation.checkpoint import SERVER_FILE, load_server
from fedad.federation.compose import check
from fedad.federation.memory import check_fits, estimate, physical_memory
from fedad.federation.provenance import write_versions
from fedad.federation.run import check_resumable
from fedad.progress import setup_logging

log = logging.getLogger("fedad")
def write_run_config(cfg: RunConfig, path: Path) -> Path:
    path.write_text(toml_table(cfg, header=None))
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


def preflight(sim: SimConfig, screen: bool = True) -> RunConfig:
    """Everything knowable before Flower starts, checked without making anything: the
    config, the app, the run to resume (its settings and its processes), the data (the
    sites' start-up check where the data is local, ``screen``) and the partition. Returns
    the run config to launch (``output_dir`` still to set).

    Raises:
        FedadError: naming the field, file, folder or client.
    """
    from partitions import partition_indices

    check(sim)  # choice fields, ranges, detector x method
    app_dir = Path(sim.app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"app_dir: no pyproject.toml in {app_dir} (fedad-sim runs the app "
                          "from its source tree; install with pip install -e <repo>)")
    cfg = run_config_of(sim)
    if cfg.resume:  # fail before Flower starts when there is nothing to resume
        cfg.resume = str(Path(cfg.resume).expanduser().resolve())
        ckpt = load_server(cfg.resume)
        running = processes_of(Path(cfg.resume).parent)
        if running:
            raise ConfigError(f"resume: processes of the killed run still run (pids "
                              f"{running[:8]}) and would write into {cfg.resume}; stop them "
                              "first (fedad.cli.crash.kill_processes_naming)")
        check_resumable(cfg, ckpt)
    if sim.ray_address:
        check_ray_address(sim.ray_address)
    if screen:
        screen_local(cfg.dataset)  # the sites' data check, in seconds
    types = build_dataset(cfg.dataset, "train").product_types
    partition_indices(types, cfg.num_clients, cfg.partition)  # an impossible split, named
    if not sim.ray_address:  # on this machine: refuse what cannot fit, saying what to change
        cpus = (os.cpu_count() or 1) // max(1, sim.client_cpus)
        processes = min(cfg.num_clients, max(1, cpus))
        check_fits(cfg, estimate(cfg, len(types), len(build_dataset(cfg.dataset, "test")),
                                 processes), physical_memory())
    return cfg


def check_ray_address(address: str) -> None:
    """Refuse a Ray address where no cluster answers (a TCP connect to its GCS port);
    ``auto`` is left to Ray (the cluster ``ray start`` recorded on this machine).

    Raises:
        ConfigError: naming the address and how to start a cluster there.
    """
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"ray_address={address!r}: expected <head host>:<port> or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"ray_address={address}: no Ray cluster answers there ({exc}); "
                          "start one with `ray start --head --port <port>` on the head and "
                          "`ray start --address <head>:<port>` on each worker") from exc


def launch(sim: SimConfig, out: Path, checked: bool = False) -> int:
    """Run the app once; 0 when Flower reports the run ``finished:completed``. A failed
    run's reason (the ServerApp's error, naming the client, file or field; else Flower's
    details) is logged and kept in ``out/failure.json`` (:func:`failure_of`). ``checked``:
    the caller ran :func:`preflight` on ``sim`` already (its data check is not repeated)."""
    cfg = preflight(sim, screen=not checked)
    app_dir = Path(sim.app_dir)
    cfg.output_dir = str(out)
    if cfg.resume:
        log.info("resuming %s after round %d", cfg.resume, load_server(cfg.resume)["round"])
    out.mkdir(parents=True, exist_ok=True)
    (out / FAILURE).unlink(missing_ok=True)  # an earlier launch's into the same folder
    write_versions(out, app_dir)
    toml = write_run_config(cfg, out / "run_config.toml")
    show_partition(cfg, out)
    link = LocalSuperLink(out / ".flwr", out / "superlink.log")
    if sim.ray_address:  # Flower's Ray backend calls ray.init(), which joins RAY_ADDRESS
        link.env["RAY_ADDRESS"] = sim.ray_address
        log.info("clients join the Ray cluster at %s", sim.ray_address)
    try:
        with link:
            run_id = flwr_run(app_dir, CONNECTION, toml, link.env,
                              ["--federation-config", federation_config(sim)],
                              pending_timeout=cfg.pending_timeout,
                              log_file=out / "flower.log", verbose=verbose())
            if run_id is None:
                return 1
            status, details = run_record(run_id, CONNECTION, link.env)
    finally:  # Ray ends its actors without their exit handlers: their feature files stay
        if cfg.backbone.stream and not sim.ray_address:
            remove_stale(stream_base(cfg.backbone.cache_dir))
    result = Path(cfg.resume) if cfg.resume else out / f"run-{run_id}"
    if status != "finished:completed":
        reason = read_failure(result, out) or details or f"the run ended as {status}"
        write_failure(out, RunFailed(reason))
        log.error("run %s ended as %s: %s", run_id, status, reason)
        return 1
    log.info("run %s completed; results: %s", run_id, result)
    summary = result / "summary.md"
    if summary.is_file():
        print(summary.read_text())
    return 0


class RunFailed(FedadError):
    """A run that Flower reports as not completed, with its reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the run failed"


def failure_of(out: Path) -> str | None:
    """Why the run launched into ``out`` failed (:func:`launch` wrote it), if it did."""
    text = read_failure(out)
    prefix = f"{RunFailed.__name__}: "
    return text[len(prefix):] if text and text.startswith(prefix) else text


def resume_command(out: Path, overrides: list[str]) -> str | None:
    """The command that resumes the run launched into ``out`` with ``overrides`` (the
    resumed run's folder when it was itself a resume, else the newest checkpointed
    ``run-*``); ``None`` when no round was checkpointed."""
    given = [o for o in overrides if o.startswith("resume=")]
    folder = Path(given[-1].split("=", 1)[1]) if given else None
    if folder is None:
        done = [p.parent for p in out.glob(f"run-*/{SERVER_FILE}")]
        folder = max(done, key=lambda p: p.stat().st_mtime) if done else None
    if folder is None:
        return None
    rest = [o for o in overrides if not o.startswith("resume=")]
    return shlex.join(["fedad-sim", f"resume={folder.resolve()}", *rest])


VERBOSE = "FEDAD_VERBOSE"  # set by fedad-sim -v: third-party lines on the console too


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0")


def console_setup() -> None:
    """One logging setup under Hydra: fedad's lines on the console and in the run
    folder's ``sim.log`` (Hydra's file handler), third-party INFO (httpx's requests)
    in ``sim.log`` only (``conf/config.yaml``); ``-v`` brings them back to the console."""
    setup_logging()
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler not in log.handlers:
            log.addHandler(handler)
        elif isinstance(handler, logging.StreamHandler) and verbose():
            handler.setLevel(logging.INFO)


@hydra.main(version_base=None, config_path=str(PROJECT / "conf"), config_name="config")
def _main(dcfg: DictConfig) -> None:
    console_setup()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    sweep = hc.mode == RunMode.MULTIRUN
    if sweep and completed_with(out, overrides):
        log.info("%s: completed before with these overrides; skipped", out)
        return
    error, sim = None, None
    try:
        sim = OmegaConf.to_object(dcfg)
        code = launch(sim, out, checked=_PRECHECKED and not sweep)
        if code:
            error = failure_of(out) or f"the run failed; see {out / 'superlink.log'}"
    except KeyboardInterrupt:  # Ctrl-C: one line on how to go on, no traceback
        again = resume_command(out, overrides)
        write_status(out, "failed", overrides, "interrupted (Ctrl-C)")
        print("\nfedad-sim: interrupted; " + (f"resume with:\n  {again}" if again else
              "no round was checkpointed, so run the same command again"), file=sys.stderr)
        sys.exit(130)
    except FedadError as exc:
        log.error("fedad-sim: %s", exc)
        code, error = 2, str(exc)
    except Exception as exc:  # in a sweep one broken combination must not stop the rest
        if not sweep:
            raise
        log.exception("fedad-sim: %s", exc)
        code, error = 1, f"{type(exc).__name__}: {exc}"
    runs = sorted(out.glob("run-*"), key=lambda p: p.stat().st_mtime)
    # a sweep's job refused before launch records what produced it too (for its report)
    if not (out / "versions.json").is_file():
        write_versions(out, PROJECT)
    if sim is not None and not (out / "run_config.toml").is_file():
        write_run_config(run_config_of(sim), out / "run_config.toml")
    write_status(out, "failed" if code else "completed", overrides, error,
                 runs[-1] if runs else None)
    if code == 1 and error:  # once, as the last lines of the console
        print(f"fedad-sim: run failed: {error}\n  (recorded in {out / 'status.json'})",
              file=sys.stderr)
    if code and not sweep:
        sys.exit(code)


def check_argv(argv: list[str]) -> None:
    """Refuse overrides of keys the config does not have before Hydra parses them (Hydra
    would suggest ``+key=``, which the closed schema then ignores, starting a default
    run): one line naming the key and the key meant, exit code 2."""
    from fedad.cli.overrides import check_keys

    try:
        check_keys([a for a in argv if "=" in a and not a.startswith("-")])
    except ConfigError as exc:
        print(f"fedad-sim: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    exit_on_sigterm()
    for flag in ("-v", "--verbose"):  # ours, not Hydra's: taken out before Hydra parses
        while flag in sys.argv[1:]:
            sys.argv.remove(flag)
            os.environ[VERBOSE] = "1"
    check_argv(sys.argv[1:])
    precheck(sys.argv[1:])
    _main()


_PRECHECKED = False  # main() ran preflight on this process's one run


def precheck(argv: list[str]) -> None:
    """One run (not a sweep): :func:`preflight` on the config the command line composes,
    before Hydra makes the run's output folder, so a refused run leaves nothing behind:
    one line naming what is wrong, exit code 2."""
    global _PRECHECKED
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    if flags or any(o.lstrip("+~").startswith("hydra/") for o in overrides):
        return  # a sweep or Hydra's own options: Hydra composes it, launch checks it
    from fedad.cli.overrides import compose

    ours = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        preflight(compose(ours, base=SimConfig()))
    except FedadError as exc:
        print(f"fedad-sim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    _PRECHECKED = True
