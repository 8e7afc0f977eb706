"""What travels between clients and server, as plain arrays (no Flower here).

``clients/`` and ``server/`` wrap these in Flower records; both use the names and checks
below so a bank is packed and validated the same way on each side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedad.errors import BankError
from fedad.memory import validate_bank

BANK = "bank"  # ArrayRecord name and array key of a memory bank
CONFIG = "config"  # ConfigRecord name of per-round instructions
METRICS = "metrics"  # MetricRecord name of a reply's numbers
NUM_EXAMPLES = "num-examples"
FILES = "files"  # start-up data check: ConfigRecord of unreadable files (clients/check.py)
ARRAYS = "arrays"  # model weights (the key Flower's FedAvg/FedProx use)
CV_SERVER = "server-cv"  # SCAFFOLD: the server's control variate, sent with the weights
CV_DELTA = "cv-delta"  # SCAFFOLD: a client's control-variate change, sent with its weights

PHASE_INIT = "init"  # round 0: build the first reduced bank (Alg. 4)
PHASE_TRAIN = "train"  # rounds >= 1: Alg. 5 ClientUpdate


def bank_to_arrays(bank: torch.Tensor) -> dict[str, np.ndarray]:
    """A bank ``(H, W, C)`` as ``{"bank": float32 ndarray}``."""
    return {BANK: np.ascontiguousarray(bank.detach().cpu().to(torch.float32).numpy())}


def bank_from_arrays(arrays: Mapping[str, np.ndarray], who: str,
                     shape: Sequence[int] | None = None) -> torch.Tensor:
    """The bank in ``arrays``, validated (shape, dtype, finite).

    Raises:
        BankError: naming ``who`` when the bank is missing or malformed.
    """
    if BANK not in arrays:
        raise BankError(f"{who}: no '{BANK}' array in the message (got {sorted(arrays)})")
    return validate_bank(arrays[BANK], who, shape)

