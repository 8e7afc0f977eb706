"""The one server strategy of every bank-exchange detector: send the global summary,
collect the clients' summaries, check each with the detector's ``validate`` and combine
the valid ones with its ``merge`` (FedDyMem: K-means, Alg. 3; PatchCore: a coreset of the
union; PaDiM: exact sums of statistics). A reply that is an error, or whose summary is
malformed, is logged, named and left out; so is, with ``robust.enabled``, an upload that is
an outlier against the others (:mod:`fedad.robust`). The round goes on with the others
when at least ``min_clients`` remain, else the run stops naming the missing ones.

A frozen-feature detector (``iterative = False``) runs one round, whatever
``train.rounds`` says, and the log says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedad.config import RunConfig
from fedad.detectors.base import Summary
from fedad.detectors.registry import create, feature_shape, rounds
from fedad.errors import BankError
from fedad.payload import BANK, CONFIG, PHASE_INIT, PHASE_TRAIN
from server.loop import RoundLoop, who

log = logging.getLogger("fedad")


def record_of(summary: Summary) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in summary.items()})


class BankStrategy(RoundLoop):
    """Round loop over the detector contract (server side: ``validate`` and ``merge``)."""

    payload_key = BANK

    def __init__(self, cfg: RunConfig, node_ids: list[int]) -> None:
        super().__init__(cfg, node_ids)
        self.detector = create(cfg, feature_shape(cfg), "cpu", seed=cfg.train.seed)
        self.first_round, self.last_round = rounds(cfg, self.detector)
        self.global_summary: Summary | None = None
        self.notes: list[str] = []  # said in the log and kept in rounds.json

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "notes": self.notes,
                "global_summary": self.global_summary}

    def restore(self, ckpt: dict) -> None:
        super().restore(ckpt)
        self.notes, self.global_summary = list(ckpt["notes"]), ckpt["global_summary"]

    def summary(self) -> None:
        d = self.detector
        if not d.iterative and self.cfg.train.rounds != 1 and not self.notes:
            self.notes.append(f"{d.name} works on frozen features: one round gives its final "
                              f"result, so it runs 1 round (train.rounds={self.cfg.train.rounds}"
                              " is ignored)")
            log.info(self.notes[-1])
        log.info("%s: %d clients, rounds %d..%d", d.name, len(self.node_ids),
                 self.first_round, self.last_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord | None,
                        config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        phase = PHASE_INIT if server_round == self.first_round else PHASE_TRAIN
        conf = ConfigRecord({**config, "round": server_round, "phase": phase})
        content = {CONFIG: conf}
        if arrays is not None:
            content[BANK] = arrays
        return self._messages(MessageType.TRAIN, RecordDict(content))

    def valid_summaries(self, replies: Iterable[Message], rnd: int
                        ) -> tuple[list[Summary], list[Message]]:
        """The uploads that pass ``validate`` and their replies; the rest is left out and
        recorded with the round and the reason."""
        good, msgs = [], []
        for msg in self.ok_replies(replies, rnd):
            try:
                arrays = {k: v.numpy() for k, v in msg.content[BANK].items()}
                good.append(self.detector.validate(arrays, who(msg)))
                msgs.append(msg)
            except (BankError, KeyError, ValueError, TypeError) as exc:
                self._reject(rnd, who(msg), str(exc).removeprefix(f"{who(msg)}: "))
        return good, msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, dict | None]:
        summaries, msgs = self.valid_summaries(replies, server_round)
        keep = self.robust_keep(server_round, msgs,
                                [self.detector.descriptor(s) for s in summaries]
                                if self.cfg.robust.enabled else [])
        summaries = [s for s, k in zip(summaries, keep, strict=True) if k]
        msgs = [m for m, k in zip(msgs, keep, strict=True) if k]
        self.require_enough(server_round, msgs)
        t = time.perf_counter()
        self.global_summary = self.detector.merge(summaries, server_round)
        self.last_aggregate_seconds = time.perf_counter() - t
        return record_of(self.global_summary), self.train_summary(msgs)
