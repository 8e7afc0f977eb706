"""FedProx's proximal term (Li et al., 2020, "Federated Optimization in Heterogeneous
Networks", Eq. 2): each client minimises ``F_k(w) + (mu / 2) * ||w - w_t||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from fedad.components.training import TrainHooks
from fedad.errors import ConfigError
from fedad.exchanges.records import Records
from fedad.exchanges.weights import WEIGHTS, WeightExchange


def proximal_term(named_params: Iterable[tuple[str, Tensor]],
                  global_params: Mapping[str, Tensor], mu: float) -> Tensor:
    """``(mu / 2) * sum ||w - w_global||^2`` over the trainable parameters in ``global_params``.

    ``named_params`` is typically ``model.named_parameters()``; parameters that do not
    require grad or have no entry in ``global_params`` are skipped (e.g. FedBN-local ones).
    The global values are treated as constants, so the gradient w.r.t. ``w`` is
    ``mu * (w - w_global)``. Returns a 0-dim tensor (a zero tensor when ``mu == 0``) on the
    device of the first parameter, to be added to the local loss.

    Raises:
        ConfigError (a ValueError): ``mu`` negative or not finite.
        ValueError: a global parameter's shape differs from the local one.
    """
    mu = float(mu)
    if not math.isfinite(mu) or mu < 0:
        raise ConfigError(f"FedProx mu must be finite and >= 0, got {mu}")
    total: Tensor | None = None
    device = None
    for name, p in named_params:
        if device is None:
            device = p.device
        if mu == 0 or not p.requires_grad or name not in global_params:
            continue
        g = global_params[name]
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"parameter {name!r}: local shape {tuple(p.shape)} but global "
                             f"shape {tuple(g.shape)}")
        sq = (p - g.detach().to(device=p.device, dtype=p.dtype)).pow(2).sum()
        total = sq if total is None else total + sq
    if total is None:
        return torch.zeros((), device=device)
    return 0.5 * mu * total


# -- the exchange -------------------------------------------------------------------------

MU = "fedprox"  # record carrying the server's mu (the server's value wins over a site's)


class FedProxExchange(WeightExchange):
    """FedAvg's aggregation; each site adds the proximal term to its loss (Eq. 2)."""

    name = "fedprox"
    summable = True  # the weighted mean: a sum of n_k w_k over n_k

    def payload(self, key: int, round_t: int) -> Records:
        return {**super().payload(key, round_t),
                MU: {"mu": np.asarray([float(self.cfg.train.proximal_mu)])}}

    def hooks(self, site_state: dict[str, Tensor], payload: Records) -> TrainHooks:
        module = self.detector.module()
        # anchor: the global weights just loaded (w_t, constant during the round)
        anchor = {k: v.detach().clone() for k, v in module.named_parameters()
                  if k in payload.get(WEIGHTS, {})}
        mu = (float(payload[MU]["mu"].reshape(-1)[0]) if MU in payload
              else self.cfg.train.proximal_mu)
        return TrainHooks(objective=lambda m, loss: loss + proximal_term(m.named_parameters(),
                                                                         anchor, mu))
