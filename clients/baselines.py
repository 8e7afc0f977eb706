"""What a client of a weight-exchanging baseline does in a round (Local, FedAvg, FedProx,
SCAFFOLD, FedBN). The work is :class:`fedad.baselines.client.WeightClient`; its head,
optimiser, local bank and control variate persist in ``context.state``."""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.context import checkpoint, client_setup, restored_state
from clients.data import ClientData, validation_metrics
from fedad.baselines.client import WeightClient
from fedad.config import RunConfig
from fedad.metrics import evaluate as compute_metrics
from fedad.payload import ARRAYS, CONFIG, CV_DELTA, CV_SERVER, METRICS, NUM_EXAMPLES

STATE = "baseline-client"


def setup(context: Context, msg: Message) -> tuple[RunConfig, ClientData, WeightClient, float]:
    cfg, data, seconds = client_setup(context)
    client = WeightClient(data.channels, cfg, data.device,
                          seed=cfg.train.seed + 1000 * data.partition_id)
    state = restored_state(context, msg, STATE, data.partition_id, lambda: True)
    if state is not None:
        client.load_arrays(state)
    return cfg, data, client, seconds


def train(msg: Message, context: Context) -> Message:
    cfg, data, client, sec_features = setup(context, msg)
    weights = msg.content[ARRAYS].to_torch_state_dict() if ARRAYS in msg.content else None
    c_global = msg.content[CV_SERVER].to_torch_state_dict() if CV_SERVER in msg.content else None
    if "proximal-mu" in msg.content[CONFIG]:  # FedProx: the server's mu wins
        client.cfg.train.proximal_mu = float(msg.content[CONFIG]["proximal-mu"])
    t = time.perf_counter()
    result = client.train_round(data.train.features, weights, c_global)
    sec_train = time.perf_counter() - t
    arrays = client.to_arrays()
    context.state[STATE] = ArrayRecord(torch_state_dict=arrays)
    checkpoint(msg, data.partition_id, int(msg.content[CONFIG].get("server-round", 0)), arrays)
    content = RecordDict({METRICS: MetricRecord({
        NUM_EXAMPLES: len(data.train), "partition-id": data.partition_id,
        "loss": result.losses[-1] if result.losses else 0.0, "steps": result.steps,
        "seconds-features": sec_features, "seconds-train": sec_train, "seconds-reduce": 0.0,
    })})
    if result.weights is not None:
        content[ARRAYS] = ArrayRecord(torch_state_dict=result.weights)
    if result.delta_c is not None:
        content[CV_DELTA] = ArrayRecord(torch_state_dict=result.delta_c)
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    cfg, data, client, sec_features = setup(context, msg)
    weights = msg.content[ARRAYS].to_torch_state_dict() if ARRAYS in msg.content else None
    t = time.perf_counter()
    scores = client.score(data.train.features, data.test.features, cfg.dataset.image_size,
                          weights)
    values = compute_metrics(scores.image, data.test.labels, scores.maps, data.test.masks)
    if data.validation is not None:  # the validation split: what choices are made on
        values.update(validation_metrics(data, client.score(
            data.train.features, data.validation.features, cfg.dataset.image_size, weights)))
    metrics = MetricRecord({**values, NUM_EXAMPLES: len(data.test),
                            "partition-id": data.partition_id,
                            "seconds-features": sec_features,
                            "seconds-eval": time.perf_counter() - t})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
