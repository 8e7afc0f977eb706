"""The fedad ClientApp (Flower Message API). ``method`` in the run config picks the handler."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import baselines, feddymem

app = ClientApp()


def _handlers(context: Context):
    return feddymem if context.run_config.get("method", "feddymem") == "feddymem" else baselines


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _handlers(context).train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handlers(context).evaluate(msg, context)
