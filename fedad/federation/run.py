"""One federated run from the server's side, whatever carries the messages: results in the
run folder after every round, then the checkpoint (the commit point), and, at the end,
the global summary that ``fedad-predict`` scores with and ``report.html``. A resumed run
(``resume=<run dir>``) goes on in the killed run's folder from its checkpoint, refusing a
config that differs in anything but how to run (:data:`fedad.federation.checkpoint.OPERATIONAL`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from fedad.config.flat import to_flat
from fedad.config.schema import RunConfig
from fedad.detectors.registry import label, resolve
from fedad.errors import ConfigError
from fedad.evaluation.html_report import report_after_run
from fedad.evaluation.report import write_run
from fedad.federation.checkpoint import config_changes, load_server, save_server, set_rng_state
from fedad.federation.server import Server, Transport
from fedad.federation.site_files import save_summary

log = logging.getLogger("fedad")


def run_folder(cfg: RunConfig, output_dir: str | Path,
               run_id: int | str) -> tuple[Path, dict | None]:
    """The run's folder (``<output_dir>/run-<id>``, absolute; or the resumed run's) and
    the checkpoint to resume from (``None``: a fresh run).

    Raises:
        ConfigError: resuming with a config that differs from the checkpointed run's.
    """
    if not cfg.resume:
        return (Path(output_dir).expanduser() / f"run-{run_id}").resolve(), None
    out = Path(cfg.resume).expanduser().resolve()
    ckpt = load_server(out)
    check_resumable(cfg, ckpt)
    log.info("resuming %s after round %d", out, ckpt["round"])
    return out, ckpt


def check_resumable(cfg: RunConfig, ckpt: dict) -> None:
    """Refuse to resume the checkpoint ``ckpt`` with settings other than its run's (what
    the launcher checks before starting anything, and the server again).

    Raises:
        ConfigError: naming each setting that differs, with the run's value and the new one.
    """
    now = to_flat(resolve(copy.deepcopy(cfg)))
    changed = config_changes(ckpt["config"], now, to_flat(resolve(RunConfig())))
    if changed:
        was = ckpt["config"]
        raise ConfigError("resume: the run config differs from the checkpointed run's in "
                          + ", ".join(f"{k} (run: {was.get(k)!r}, now: {now.get(k)!r})"
                                      for k in changed)
                          + "; resume with the run's settings (leave those overrides out)")


def federate(cfg: RunConfig, transport: Transport, keys: Sequence[int], out: Path,
             ckpt: dict | None = None) -> Server:
    """Run every round through ``transport`` to the sites ``keys``; write the results to
    ``out`` as they come. Returns the server (history, rejections, exchange state)."""
    cfg = resolve(cfg)
    log.info("%s: results in %s", label(cfg), out)
    server = Server(cfg, keys)

    def save(_record: dict) -> None:
        write_run(out, cfg, server.history, server.extras())

    def save_round(record: dict) -> None:  # results, then the checkpoint (the commit point)
        save(record)
        save_server(out, {**server.checkpoint_state(), "config": to_flat(cfg)})

    if ckpt is not None:
        server.restore(ckpt)
        set_rng_state(ckpt["rng"])
    server.run(transport, {"out": str(out)}, on_round=save_round)
    summary = server.exchange.global_summary()
    if summary is not None:
        save_summary(out, summary)
    save({})
    report_after_run(out)  # report.html; a failure is only a warning
    log.info("finished: %s", out / "summary.md")
    return server
