"""Memory-reduce (paper Alg. 2, Eq. 14-16): many memory features -> one ``(H, W, C)`` bank.

``bar_M = sum_i w_i M_i / sum_i w_i`` (Eq. 14) with ``w_i = 1`` at round 0 and
``w_i = 1 / ||M_i - M^{t-1}||_2`` after (Eq. 15, the norm over the whole map), then the
round-based EMA ``M_reduce = a * bar_M + (1 - a) * M^{t-1}`` with ``a = 1/(t+1)`` (Eq. 16).
As in the paper, ``M^{t-1}`` is the bank the client received, compared position by position.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedad.errors import BankError


def reduce_weights(memories: torch.Tensor, previous: torch.Tensor | None, round_t: int,
                   eps: float = 1e-12) -> torch.Tensor:
    """Eq. 15: one weight per memory feature of ``(B, H, W, C)`` memories."""
    if round_t == 0:
        return torch.ones(memories.shape[0], dtype=memories.dtype, device=memories.device)
    if previous is None:
        raise BankError(f"memory-reduce at round {round_t} needs the previous bank")
    diff = (memories - previous.to(memories)).flatten(1)
    return 1.0 / torch.linalg.vector_norm(diff, dim=1).clamp_min(eps)


class MemoryReducer:
    """Streaming memory-reduce: feed batches of ``(B, H, W, C)`` memories, then ``result``."""

    def __init__(self, previous: torch.Tensor | None, round_t: int) -> None:
        if round_t < 0:
            raise ValueError(f"round must be >= 0, got {round_t}")
        self.previous = previous
        self.round_t = round_t
        self.weighted_sum: torch.Tensor | None = None
        self.weight_total = 0.0
        self.count = 0

    def update(self, memories: torch.Tensor) -> None:
        memories = memories.detach().to(torch.float64)
        w = reduce_weights(memories, self.previous, self.round_t)
        part = torch.einsum("b,bhwc->hwc", w, memories)
        self.weighted_sum = part if self.weighted_sum is None else self.weighted_sum + part
        self.weight_total += float(w.sum())
        self.count += memories.shape[0]

    def result(self) -> torch.Tensor:
        """The reduced bank ``(H, W, C)`` float32 (Eq. 14, then Eq. 16 when t > 0)."""
        if self.weighted_sum is None:
            raise BankError("memory-reduce: no memory features were given")
        mean = self.weighted_sum / self.weight_total
        if self.round_t > 0:
            alpha = 1.0 / (self.round_t + 1)
            mean = alpha * mean + (1.0 - alpha) * self.previous.to(mean)
        return mean.to(torch.float32)


def memory_reduce(batches: Iterable[torch.Tensor], previous: torch.Tensor | None,
                  round_t: int) -> torch.Tensor:
    """Reduce an iterable of ``(B, H, W, C)`` memory batches to one bank (Alg. 2)."""
    reducer = MemoryReducer(previous, round_t)
    for batch in batches:
        reducer.update(batch)
    return reducer.result()
