"""fedad's messages as Flower records and back, for both ends (``clients/``, ``server/``):
each named set of arrays is an ``ArrayRecord``, the instructions a ``ConfigRecord``
(``config``), the results a ``MetricRecord`` (``metrics``) and lists of file names a
``ConfigRecord`` (``files``)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedad.federation.payload import CONFIG, FILES, METRICS
from fedad.federation.records import Envelope, Records, Reply


def content(records: Records, **named: dict) -> RecordDict:
    out = RecordDict({k: ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in v.items()})
                      for k, v in records.items()})
    for name, value in named.items():
        if value:
            out[name] = MetricRecord(value) if name == METRICS else ConfigRecord(value)
    return out


def arrays_of(rd: RecordDict) -> Records:
    return {k: {n: a.numpy() for n, a in rec.items()} for k, rec in rd.array_records.items()}


def envelope_of(msg: Message) -> Envelope:
    rd = msg.content
    return Envelope(arrays_of(rd), dict(rd.config_records.get(CONFIG, {})))


def message_of(env: Envelope, kind: str, node: int) -> Message:
    return Message(content=content(env.records, **{CONFIG: env.config}), message_type=kind,
                   dst_node_id=node)


def reply_message(reply: Reply, msg: Message) -> Message:
    return Message(content=content(reply.records, **{METRICS: reply.metrics,
                                                     FILES: reply.lists}), reply_to=msg)


def reply_of(msg: Message) -> Reply:
    key = int(msg.metadata.src_node_id)
    if msg.has_error():
        return Reply(key=key, error=str(msg.error.reason))
    rd = msg.content
    return Reply(key=key, records=arrays_of(rd),
                 metrics=dict(rd.metric_records.get(METRICS, {})),
                 lists={k: list(v) for k, v in rd.config_records.get(FILES, {}).items()})
