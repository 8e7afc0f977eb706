"""A transport without Flower: every site lives in this process and answers in turn. What
the in-process runner, ``fedad-centralized`` and the tests federate through; the sites do
exactly what a Flower ClientApp does with the same messages (:func:`fedad.federation.site.
handle`), so a run here and a run through Flower differ only in how bytes move."""

from __future__ import annotations

import logging
import time

from fedad.config.schema import RunConfig
from fedad.federation.records import Envelope, Reply
from fedad.federation.server import Delivery, delivered
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
