"""fedad's messages as Flower records and back, for both ends (``clients/``, ``server/``):
each named set of arrays is an ``ArrayRecord``, the instructions a ``ConfigRecord``
(``config``), the results a ``MetricRecord`` (``metrics``) and lists of file names a
``ConfigRecord`` (``files``)."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

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


# -- secure aggregation: fedad's train message as the legacy FitIns / FitRes that Flower's
# SecAgg+ workflow and mod carry (server/secure.py, clients/secure.py) -----------------------
ARRAY_NAMES = "fedad-arrays"  # FitIns config: JSON [[record, array], ...] of its parameters
ENVELOPE_CONFIG = "fedad-config"  # FitIns config: JSON of the envelope's config


def fitins_of(env: Envelope) -> FitIns:
    """An envelope as FitIns: its arrays in order as the parameters, their names and the
    envelope's config as JSON in the FitIns config."""
    names = [[rec, name] for rec, arrays in env.records.items() for name in arrays]
    params = ndarrays_to_parameters([np.ascontiguousarray(env.records[r][n])
                                     for r, n in names])
    return FitIns(params, {ARRAY_NAMES: json.dumps(names),
                           ENVELOPE_CONFIG: json.dumps(env.config)})


def envelope_of_fitins(fitins: FitIns) -> Envelope:
    """Back from :func:`fitins_of`."""
    names = json.loads(str(fitins.config[ARRAY_NAMES]))
    records: Records = {}
    for (rec, name), value in zip(names, parameters_to_ndarrays(fitins.parameters),
                                  strict=True):
        records.setdefault(rec, {})[name] = value
    return Envelope(records, json.loads(str(fitins.config[ENVELOPE_CONFIG])))


def fitres_of(terms: dict[str, np.ndarray], metrics: dict) -> FitRes:
    """A site's encoded sum terms (in order) as the FitRes SecAgg+ masks: weight 1, so the
    workflow's weighted mean is the sum over the sites divided by their number."""
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(terms.values())), 1,
                  dict(metrics))
