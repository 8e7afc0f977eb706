"""The fedad ClientApp (Flower Message API). Bank-exchange detectors share one handler
(:mod:`clients.bank`); the weight-exchanging baselines have theirs (:mod:`clients.baselines`).
Faults named in the run config (``faults``, for reliability tests) are injected here
(:mod:`clients.faults`).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import bank, baselines
from clients.check import data_check
from clients.context import node_data
from clients.faults import active, inject
from fedad.detectors.registry import exchanges_weights
from fedad.payload import CONFIG
from fedad.runconfig import from_flat

app = ClientApp()


def _handlers(context: Context):
    return baselines if exchanges_weights(from_flat(context.run_config)) else bank


def _faults(msg: Message, context: Context) -> list[str]:
    specs = from_flat(context.run_config).faults
    if not specs:
        return []
    conf = msg.content[CONFIG] if CONFIG in msg.content else {}
    rnd = int(conf.get("round", conf.get("server-round", -1)))
    kinds = active(specs, node_data(context).site, rnd)
    if "raise" in kinds:
        raise RuntimeError(f"fault injection: partition {node_data(context).site} fails in "
                           f"round {rnd}")
    return kinds


@app.train()
def train(msg: Message, context: Context) -> Message:
    kinds = _faults(msg, context)
    return inject(_handlers(context).train(msg, context), kinds)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handlers(context).evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The start-up data check (:mod:`clients.check`)."""
    return data_check(msg, context)
