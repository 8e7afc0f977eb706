"""The fedad ClientApp (Flower Message API): it moves Flower records to and from
:func:`fedad.federation.site.handle`, which does the site's work for every detector and
exchange. The site's state lives in ``context.state`` between rounds."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.codec import envelope_of, reply_message
from clients.secure import is_secure, secure_envelope, secure_mod, secure_reply
from fedad.config.flat import from_flat
from fedad.federation.records import EVALUATE, QUERY, TRAIN
from fedad.federation.site import handle
from fedad.federation.site_data import node_data
from partitions import partition_node

app = ClientApp(mods=[secure_mod])  # SecAgg+'s mod acts on its own messages only
STATE = "site-state"


class ContextStore:
    """The site's state in Flower's ``context.state``."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def get(self) -> dict[str, torch.Tensor] | None:
        rec = self.context.state.array_records.get(STATE)
        return None if rec is None else rec.to_torch_state_dict()

    def put(self, state: dict[str, torch.Tensor]) -> None:
        self.context.state[STATE] = ArrayRecord(torch_state_dict=state)


def _handle(kind: str, msg: Message, context: Context) -> Message:
    cfg = from_flat(context.run_config)  # parsed once per message
    node = partition_node(cfg, node_data(context.node_config, context.node_id))
    return reply_message(handle(kind, envelope_of(msg), cfg, node, ContextStore(context)), msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if is_secure(msg):  # the masking stage of secure aggregation (clients/secure.py)
        cfg = from_flat(context.run_config)
        node = partition_node(cfg, node_data(context.node_config, context.node_id))
        return secure_reply(handle(TRAIN, secure_envelope(msg), cfg, node,
                                   ContextStore(context)), msg)
    return _handle(TRAIN, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(EVALUATE, msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The start-up data check."""
    return _handle(QUERY, msg, context)
