"""The fedad ClientApp (Flower Message API). Bank-exchange detectors share one handler
(:mod:`clients.bank`); the weight-exchanging baselines have theirs (:mod:`clients.baselines`).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import bank, baselines
from fedad.detectors.registry import exchanges_weights
from fedad.runconfig import from_flat

app = ClientApp()


def _handlers(context: Context):
    return baselines if exchanges_weights(from_flat(context.run_config)) else bank


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handlers(context).train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handlers(context).evaluate(msg, context)
