"""Flower's grid as a :class:`~fedad.federation.server.Transport`: the nodes that joined,
and one round's messages sent and replies collected, with progress in the log."""

from __future__ import annotations

import logging
import time

from flwr.app import MessageType
from flwr.serverapp import Grid

from clients.codec import message_of, reply_of
from fedad.config.schema import SecureConfig
from fedad.federation.records import EVALUATE, QUERY, TRAIN, Envelope
from fedad.federation.server import Delivery, delivered
from server.secure import secure_sum

log = logging.getLogger("fedad")


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """Node ids once ``n`` nodes are connected (sorted), or ``TimeoutError`` saying why."""
    start, last_log = time.time(), 0.0
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes[:n]
        if time.time() - start > timeout:
            raise TimeoutError(
                f"only {len(nodes)} of num_clients={n} nodes connected after {timeout:.0f}s; "
                "start more SuperNodes or set num_clients (and the federation's "
                "num-supernodes) to the number of sites")
        if time.time() - last_log > 10:
            log.info("waiting for nodes: %d/%d connected", len(nodes), n)
            last_log = time.time()
        time.sleep(0.5)


class GridTransport:
    """Envelopes to nodes through Flower's grid; replies back (with progress in the log)."""

    def __init__(self, grid: Grid, secure: SecureConfig | None = None,
                 poll: float = 0.2) -> None:
        self.grid, self.poll, self.secure = grid, poll, secure or SecureConfig()

    def secure_sum(self, envelopes: dict[int, Envelope], timeout: float, desc: str,
                   names: list[str], levels: int) -> Delivery:
        """A train round through SecAgg+ (:mod:`server.secure`)."""
        return secure_sum(self.grid, self.secure, envelopes, timeout, desc, names, levels)

    def send(self, kind: str, envelopes: dict[int, Envelope], timeout: float,
             desc: str) -> Delivery:
        """Push the messages, pull replies until all came back or ``timeout``."""
        t0 = time.time()
        if not envelopes:
            return Delivery()
        kind = {TRAIN: MessageType.TRAIN, EVALUATE: MessageType.EVALUATE,
                QUERY: MessageType.QUERY}[kind]
        messages = [message_of(e, kind, node) for node, e in envelopes.items()]
        pushed = list(self.grid.push_messages(messages))
        dst = dict(zip(pushed, envelopes, strict=True))
        ids = set(pushed)
        replies, total, done, last_log = [], len(ids), 0, time.time()
        while ids and time.time() - t0 < timeout:
            for r in self.grid.pull_messages(ids):
                ids.discard(r.metadata.reply_to_message_id)
                replies.append(reply_of(r))
            if len(replies) > done or time.time() - last_log > 30:
                done, last_log = len(replies), time.time()
                log.info("%s: %d/%d clients done (%.0fs)", desc, done, total, time.time() - t0)
            if ids:
                time.sleep(self.poll)
        return delivered(replies, [dst.get(i, -1) for i in ids], envelopes, time.time() - t0)
