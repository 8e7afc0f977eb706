"""Sending a round's messages and collecting replies, with progress and byte accounting."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from fedad.payload import METRICS

log = logging.getLogger("fedad")


def message_nbytes(msg: Message) -> int:
    """Bytes of every array a message carries (the payload; metadata is a few hundred B)."""
    if not msg.has_content():
        return 0
    return sum(len(arr.data) for rec in msg.content.array_records.values()
               for arr in rec.values())


@dataclass
class Exchange:
    """One send-and-collect: replies in partition order (see :func:`reply_order`) plus
    what it cost."""

    replies: list[Message] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    missing: list[int] = field(default_factory=list)


def reply_order(msg: Message) -> tuple[float, int]:
    """Sort key of a reply: the client's ``partition-id`` (its site), then its node id.
    Simulated node ids are drawn anew every run, so ordering by them would feed the same
    uploads to aggregation (K-means initialisation, float sums) in a different order from
    one run to the next; the partition id makes a run reproducible."""
    pid = float("inf")
    if msg.has_content() and METRICS in msg.content.metric_records:
        pid = float(msg.content.metric_records[METRICS].get("partition-id", pid))
    return pid, msg.metadata.src_node_id


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


def exchange(grid: Grid, messages: Sequence[Message], timeout: float, desc: str,
             poll: float = 0.2) -> Exchange:
    """Push ``messages``, pull replies until all came back or ``timeout``; log progress."""
    out = Exchange(bytes_sent=sum(message_nbytes(m) for m in messages))
    t0 = time.time()
    if not messages:
        return out
    dst_nodes = [m.metadata.dst_node_id for m in messages]
    pushed = list(grid.push_messages(messages))
    dst = dict(zip(pushed, dst_nodes, strict=True))
    ids = set(pushed)
    total, done, last_log = len(ids), 0, time.time()
    while ids and time.time() - t0 < timeout:
        replies = list(grid.pull_messages(ids))
        for r in replies:
            ids.discard(r.metadata.reply_to_message_id)
            out.replies.append(r)
        if len(out.replies) > done or time.time() - last_log > 30:
            done = len(out.replies)
            last_log = time.time()
            log.info("%s: %d/%d clients done (%.0fs)", desc, done, total, time.time() - t0)
        if ids:
            time.sleep(poll)
    out.missing = sorted(dst.get(i, -1) for i in ids)
    out.bytes_received = sum(message_nbytes(r) for r in out.replies)
    out.replies.sort(key=reply_order)
    out.seconds = time.time() - t0
    return out
