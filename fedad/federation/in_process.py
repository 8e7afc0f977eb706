"""A transport without Flower: every site lives in this process and answers in turn. What
the in-process runner, ``fedad-centralized`` and the tests federate through; the sites do
exactly what a Flower ClientApp does with the same messages (:func:`fedad.federation.site.
handle`), so a run here and a run through Flower differ only in how bytes move.

Benchmarks that pick a round (on the validation split) keep and restore the states of
both sides and score again through :func:`keep_round`, :func:`restore_round` and
:func:`evaluate_round`, not by hand."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.federation.records import EVALUATE, Envelope, Reply
from fedad.federation.server import Delivery, Server, delivered
from fedad.federation.site import DictStore, handle
from fedad.federation.site_data import NodeData

log = logging.getLogger("fedad")


class InProcess:
    """The sites ``nodes`` (``partitions.partition_nodes(cfg)``: a partition each of the
    run's dataset; default: one site holding all of it), keyed by their site number, each
    with its own state store."""

    def __init__(self, cfg: RunConfig, nodes: list[NodeData] | None = None) -> None:
        self.cfg = cfg
        self.nodes = nodes or [NodeData(0, 1)]
        self.stores = {n.site: DictStore() for n in self.nodes}

    @property
    def keys(self) -> list[int]:
        return [n.site for n in self.nodes]

    def send(self, kind: str, envelopes: dict[int, Envelope], timeout: float,
             desc: str) -> Delivery:
        t0 = time.perf_counter()
        replies = []
        for node in self.nodes:
            if node.site not in envelopes:
                continue
            try:
                reply = handle(kind, envelopes[node.site], self.cfg, node,
                               self.stores[node.site])
            except Exception as exc:  # a failing site is an error reply, as in Flower
                log.warning("%s: site %d failed: %s", desc, node.site, exc)
                reply = Reply(key=node.site, metrics={"partition-id": node.site},
                              error=f"{type(exc).__name__}: {exc}")
            reply.key = node.site
            replies.append(reply)
        return delivered(replies, [], envelopes, time.perf_counter() - t0)

    def secure_sum(self, envelopes: dict[int, Envelope], timeout: float, desc: str,
                   names: list[str], levels: int) -> Delivery:
        """Refused: masking needs sites that are not one process.

        Raises:
            ConfigError: saying where secure aggregation runs.
        """
        raise ConfigError("secure.enabled: secure aggregation runs through Flower's SecAgg+ "
                          "(fedad-sim or a deployment), not in one process")


@dataclass
class KeptRound:
    """A round's states, both sides: every site's store and the exchange's global state."""

    round: int
    sites: dict[int, dict | None]
    exchange: dict


def keep_round(server: Server, transport: InProcess, rnd: int) -> KeptRound:
    """A copy of the states after round ``rnd`` (what :func:`restore_round` puts back)."""
    return KeptRound(rnd, {k: copy.deepcopy(s.state) for k, s in transport.stores.items()},
                     copy.deepcopy(server.exchange.state()))


def restore_round(server: Server, transport: InProcess, kept: KeptRound) -> None:
    """Put back the states :func:`keep_round` copied (both sides)."""
    for k, state in kept.sites.items():
        transport.stores[k].state = state
    server.exchange.load_state(kept.exchange)


def evaluate_round(server: Server, transport: InProcess, rnd: int, config: dict | None = None,
                   desc: str = "evaluate") -> dict | None:
    """Score every site again with the states it holds (after :func:`restore_round`: those
    of a chosen round), as the round loop does: the evaluation record of round ``rnd``
    (``config`` goes to every site, e.g. ``{"test": False}`` for the validation split
    only)."""
    conf = {"round": rnd, "final": False, **(config or {})}
    delivery = transport.send(EVALUATE, {k: Envelope(server.exchange.evaluation_payload(k),
                                                     conf) for k in transport.keys},
                              server.cfg.round_timeout, desc)
    return server.evaluation(rnd, delivery)
