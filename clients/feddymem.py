"""What a FedDyMem client does in a round (paper Alg. 4 and 5). It moves Flower records in
and out; the work is :class:`fedad.detectors.feddymem.FedDyMemClient`.

The head's weights and Adam state stay on the client, in ``context.state`` (they survive
rounds on real SuperNodes too); only banks travel.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.context import client_setup
from clients.data import ClientData
from fedad.config import RunConfig
from fedad.detectors.feddymem import FedDyMemClient
from fedad.metrics import evaluate as compute_metrics
from fedad.payload import (
    BANK,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    PHASE_INIT,
    bank_from_arrays,
    bank_to_arrays,
)

STATE = "feddymem-client"


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def setup(context: Context) -> tuple[RunConfig, ClientData, FedDyMemClient, float]:
    cfg, data, seconds_features = client_setup(context)
    pid = data.partition_id
    # Alg. 4 line 2: each client initialises its head randomly (its own draw by default;
    # train.shared_init=true gives every client the same draw).
    seed = cfg.train.seed if cfg.train.shared_init else cfg.train.seed + 1000 * pid
    client = FedDyMemClient(data.channels, cfg.head, cfg.train, data.device, seed=seed)
    if STATE in context.state:
        client.load_arrays(context.state[STATE].to_torch_state_dict())
    return cfg, data, client, seconds_features


def train(msg: Message, context: Context) -> Message:
    """Round 0: the first reduced bank (Alg. 4). Round t: E epochs of the metric loss
    against the global bank, then memory-reduce (Alg. 5 ClientUpdate)."""
    cfg, data, client, sec_features = setup(context)
    conf = msg.content[CONFIG]
    round_t, phase = int(conf["round"]), str(conf["phase"])
    losses: list[float] = []
    t = time.perf_counter()
    if phase == PHASE_INIT:
        sec_train = 0.0
        bank = client.initial_bank(data.train.features)
    else:
        global_bank = bank_from_arrays(arrays_of(msg.content[BANK]), "server")
        losses = client.train_epochs(data.train.features, global_bank)
        sec_train = time.perf_counter() - t
        t = time.perf_counter()
        bank = client.reduce(data.train.features, global_bank, round_t)
    sec_reduce = time.perf_counter() - t
    context.state[STATE] = ArrayRecord(torch_state_dict=client.to_arrays())
    metrics = MetricRecord({
        NUM_EXAMPLES: len(data.train), "partition-id": data.partition_id,
        "loss": losses[-1] if losses else 0.0, "seconds-features": sec_features,
        "seconds-train": sec_train, "seconds-reduce": sec_reduce,
    })
    return Message(content=RecordDict({BANK: record_of(bank_to_arrays(bank)),
                                       METRICS: metrics}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Score the global test set with this client's head and the global bank."""
    cfg, data, client, sec_features = setup(context)
    bank = bank_from_arrays(arrays_of(msg.content[BANK]), "server")
    t = time.perf_counter()
    scores = client.score(data.test.features, bank, cfg.dataset.image_size, cfg.score)
    values = compute_metrics(scores.image, data.test.labels, scores.maps, data.test.masks)
    sec_eval = time.perf_counter() - t
    conf = msg.content[CONFIG]
    if bool(conf.get("final", False)) and data.partition_id == 0 and cfg.examples > 0:
        from clients.examples import save_examples  # matplotlib only when needed

        save_examples(cfg, data, scores, str(conf.get("out", "")), cfg.examples)
    metrics = MetricRecord({**values, NUM_EXAMPLES: len(data.test),
                            "partition-id": data.partition_id,
                            "seconds-features": sec_features, "seconds-eval": sec_eval})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)



