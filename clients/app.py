"""The fedad ClientApp (Flower Message API). ``method`` in the run config picks the handler."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import feddymem

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return feddymem.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return feddymem.evaluate(msg, context)
