"""The fedad ServerApp (Flower Message API): it waits for the sites' nodes and runs
:func:`fedad.federation.run.federate` over Flower's grid (:mod:`server.transport`), for
every detector and exchange."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedad.config.flat import from_flat
from fedad.detectors.registry import resolve
from fedad.evaluation.run_status import write_failure
from fedad.federation.run import federate, run_folder
from fedad.progress import setup_logging
from server.transport import GridTransport, wait_for_nodes

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    out = None
    try:
        cfg = resolve(from_flat(context.run_config))
        out, ckpt = run_folder(cfg, cfg.output_dir, context.run_id)
        nodes = wait_for_nodes(grid, cfg.num_clients, cfg.wait_for_nodes)
        federate(cfg, GridTransport(grid, cfg.secure), nodes, out, ckpt)
    except Exception as exc:  # the reason, where the launcher looks for it; Flower's too
        where = out or context.run_config.get("output_dir")
        if where:
            write_failure(where, exc)
        raise
