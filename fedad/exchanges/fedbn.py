"""FedBN (Li et al., 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization"): BatchNorm parameters and statistics stay on each client, everything else
is averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedad.components.states import StateError
from fedad.errors import ConfigError
from fedad.exchanges.weights import WeightExchange


def batchnorm_keys(model: nn.Module) -> set[str]:
    """Every ``model.state_dict()`` key that belongs to a BatchNorm layer (any ``_BatchNorm``
    subclass, SyncBatchNorm included): ``weight``, ``bias``, ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` (those the layer has)."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            keys.update(module.state_dict(prefix=f"{name}." if name else "").keys())
    return keys


def split_state(state: Mapping[str, Tensor],
                local_keys: Iterable[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(shared, local)``: ``state`` split into the entries to exchange and those in
    ``local_keys`` to keep on the client; both keep ``state``'s key order.

    Raises:
        StateError (a ValueError): a local key is not in ``state`` (likely a typo).
    """
    local_set = set(local_keys)
    unknown = sorted(local_set - set(state))
    if unknown:
        raise StateError(f"local key {unknown[0]!r} is not in the state")
    shared = {k: v for k, v in state.items() if k not in local_set}
    local = {k: v for k, v in state.items() if k in local_set}
    return shared, local


def merge_state(shared: Mapping[str, Tensor], local: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`split_state`: one dict with the entries of both.

    Raises:
        StateError (a ValueError): a key is in both (it would be ambiguous).
    """
    both = sorted(set(shared) & set(local))
    if both:
        raise StateError(f"key {both[0]!r} is both shared and local")
    return {**shared, **local}


# -- the exchange ----------------------------------------------------------------------------


class FedBNExchange(WeightExchange):
    """FedAvg over every tensor but the BatchNorm layers', which stay at each site."""

    name = "fedbn"
    summable = True  # the weighted mean: a sum of n_k w_k over n_k

    def local_keys(self, module: nn.Module) -> set[str]:
        local = batchnorm_keys(module)
        if not local:  # FedBN without BatchNorm would be FedAvg under another name
            raise ConfigError(
                f"exchange=fedbn keeps BatchNorm layers local, but detector="
                f"{self.detector.name}'s {type(module).__name__} has none"
                + self.detector.batch_norm_hint)
        return local
