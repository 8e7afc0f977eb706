"""The server's side of secure aggregation (``secure.enabled``): one train round as Flower's
SecAgg+ workflow (setup, key sharing, masked vectors, unmasking) over the grid. The
workflow asks a strategy for the round's FitIns (fedad's envelopes, :func:`clients.codec.
fitins_of`) and hands it the unmasked result: the mean of the sites' encoded sum terms,
each site weighted 1, which times the number of sites that stayed is their sum. Sites that
drop out after sharing their keys are unmasked from their neighbours' shares, as SecAgg+
allows; with fewer than ``secure.threshold`` shares left the protocol halts and the round
has no sum. Bytes of every protocol message are counted both ways."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from clients.codec import fitins_of
from fedad.config.schema import SecureConfig
from fedad.federation.records import Envelope, Reply
from fedad.federation.server import Delivery

log = logging.getLogger("fedad")


def content_nbytes(content: RecordDict) -> int:
    """Bytes of a message's arrays and of the bytes values of its config records (keys,
    shares, masked vectors); scalars are left out."""
    total = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    for rec in content.config_records.values():
        for v in rec.values():
            if isinstance(v, bytes):
                total += len(v)
            elif isinstance(v, list):
                total += sum(len(x) for x in v if isinstance(x, bytes))
    return total


class CountingGrid:
    """The grid, counting the bytes of what the workflow sends and receives."""

    def __init__(self, grid: Grid) -> None:
        self.grid, self.sent, self.received, self.stages = grid, 0, 0, 0

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        self.sent += sum(content_nbytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received += sum(content_nbytes(m.content) for m in replies
                             if not m.has_error())
        self.stages += 1
        return replies

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


class SumStrategy:
    """What SecAgg+'s workflow asks of a strategy: the round's FitIns, and the result."""

    def __init__(self, grid: Grid, envelopes: dict[int, Envelope]) -> None:
        self.fitins = [(GridClientProxy(node, grid, 0), fitins_of(env))
                       for node, env in envelopes.items()]
        self.results: list[tuple[ClientProxy, object]] | None = None

    def configure_fit(self, server_round, parameters, client_manager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        return self.fitins

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return None, {}


def _count(value: float) -> int | float:
    """A fraction stays a float for SecAgg+; a count becomes an int."""
    return float(value) if value <= 1 else int(value)


def secure_sum(grid: Grid, cfg: SecureConfig, envelopes: dict[int, Envelope],
               timeout: float, desc: str, names: list[str], levels: int) -> Delivery:
    """One secure train round over ``envelopes``: replies with metrics only, ``sums`` of the
    terms ``names`` over the sites that stayed (``None``: the protocol halted)."""
    t0 = time.time()
    counting = CountingGrid(grid)
    strategy = SumStrategy(grid, envelopes)
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(_count(cfg.num_shares), _count(cfg.threshold),
                                  max_weight=1.0, clipping_range=cfg.clipping_range,
                                  quantization_range=levels, timeout=timeout)
    log.info("%s: secure aggregation (SecAgg+) with %d sites", desc, len(envelopes))
    workflow(counting, context)  # type: ignore[arg-type]
    results = strategy.results or []
    replies = [Reply(key=int(proxy.node_id), metrics=dict(res.metrics))
               for proxy, res in results]
    sums = None
    if results:
        mean = parameters_to_ndarrays(results[0][1].parameters)
        if len(mean) != len(names):
            raise RuntimeError(f"secure aggregation: {len(mean)} summed terms, expected "
                               f"{len(names)} ({', '.join(names)})")
        sums = {n: np.asarray(m, dtype=np.float64) * len(results)
                for n, m in zip(names, mean, strict=True)}
    got = {r.key for r in replies}
    seconds = time.time() - t0
    log.info("%s: secure sum of %d/%d sites (%.0fs)", desc, len(got), len(envelopes), seconds)
    return Delivery(replies=replies, missing=[], bytes_sent=counting.sent,
                    bytes_received=counting.received, seconds=seconds, sums=sums,
                    secure={"levels": levels, "halted": sums is None,
                            "dropped": sorted(k for k in envelopes if k not in got),
                            "messages": counting.stages})
