"""The FedDyMem strategy: what the server does with the clients' banks (paper Alg. 3-5).

Round 0 collects the initial reduced banks (Alg. 4); each later round sends the global bank,
collects the reduced banks and aggregates them by K-means (Alg. 3); evaluation rounds ask
every client to score the global test set with its own head and the global bank. A reply
that is an error, or whose bank is malformed or non-finite, is logged and left out: one
misbehaving client never stops the server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedad.config import RunConfig
from fedad.errors import BankError
from fedad.memory import aggregate
from fedad.payload import BANK, CONFIG, PHASE_INIT, PHASE_TRAIN, bank_from_arrays, bank_to_arrays
from server.loop import RoundLoop, who


class FedDyMemStrategy(RoundLoop):
    """Bank aggregation by K-means (or plain average for the ablation)."""

    payload_key = BANK
    first_round = 0  # round 0: initial banks (Alg. 4)

    def __init__(self, cfg: RunConfig, node_ids: list[int]) -> None:
        super().__init__(cfg, node_ids)
        self.bank_shape: tuple[int, ...] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        conf = ConfigRecord({**config, "round": server_round,
                             "phase": PHASE_INIT if server_round == 0 else PHASE_TRAIN})
        content = RecordDict({CONFIG: conf} if server_round == 0 else
                             {BANK: arrays, CONFIG: conf})
        return self._messages(MessageType.TRAIN, content)

    def valid_banks(self, replies: Iterable[Message]) -> tuple[list, list[Message]]:
        """The well-formed banks and their replies; everything else is logged and dropped."""
        candidates = []
        for msg in self.ok_replies(replies):
            try:
                arrays = {k: v.numpy() for k, v in msg.content[BANK].items()}
                candidates.append((bank_from_arrays(arrays, who(msg), self.bank_shape), msg))
            except (BankError, KeyError, ValueError, TypeError) as exc:
                self._reject(f"{who(msg)}: {exc}")
        if self.bank_shape is None and candidates:  # round 0: the majority sets the shape
            self.bank_shape = Counter(tuple(b.shape) for b, _ in candidates).most_common(1)[0][0]
        good = [(b, m) for b, m in candidates if tuple(b.shape) == self.bank_shape]
        for b, m in candidates:
            if tuple(b.shape) != self.bank_shape:
                self._reject(f"{who(m)}: bank shape {tuple(b.shape)} differs from "
                             f"{self.bank_shape}")
        return [b for b, _ in good], [m for _, m in good]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, dict | None]:
        banks, msgs = self.valid_banks(replies)
        if not banks:
            raise RuntimeError(f"round {server_round}: no valid bank from any client "
                               f"({'; '.join(self.rejected[-len(self.node_ids):])})")
        t = time.perf_counter()
        bank = aggregate(banks, self.cfg.train.aggregation, seed=self.cfg.train.seed +
                         server_round, niter=self.cfg.train.kmeans_iters,
                         init=self.cfg.train.kmeans_init)
        self.last_aggregate_seconds = time.perf_counter() - t
        record = ArrayRecord({k: Array(v) for k, v in bank_to_arrays(bank).items()})
        return record, self.train_summary(msgs)
