"""Weight-exchanging federated baselines as pure functions on state dicts (pure torch).

FedAvg (McMahan et al., 2017), FedProx (Li et al., 2020), SCAFFOLD (Karimireddy et al.,
2020, option II) and FedBN (Li et al., 2021).
"""

from __future__ import annotations

from fedad.baselines.fedavg import StateError, weighted_mean
from fedad.baselines.fedbn import batchnorm_keys, merge_state, split_state
from fedad.baselines.fedprox import proximal_term
from fedad.baselines.scaffold import (
    client_control_update,
    correct_gradients,
    server_update,
    zeros_like_state,
)

__all__ = [
    "StateError",
    "batchnorm_keys",
    "client_control_update",
    "correct_gradients",
    "merge_state",
    "proximal_term",
    "server_update",
    "split_state",
    "weighted_mean",
    "zeros_like_state",
]
