"""FedAvg (McMahan et al., 2017, Alg. 1): every site trains the detector's module from the
global weights, the server takes the mean of the uploads weighted by each site's training
images, ``w <- sum_k n_k w_k / sum_k n_k`` (:func:`fedad.components.states.weighted_mean`,
in float64). Everything is :class:`~fedad.exchanges.weights.WeightExchange`'s
default."""

from __future__ import annotations

from fedad.exchanges.weights import WeightExchange


class FedAvgExchange(WeightExchange):
    name = "fedavg"
    summable = True  # the weighted mean: a sum of n_k w_k over n_k
