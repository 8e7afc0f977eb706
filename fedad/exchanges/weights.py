"""What every weight exchange shares: the detector's trainable module (``module()``) is
trained at each site and its weights travel; each site scores against its own summary,
rebuilt from its training features with the current module (``own_summary``: FedDyMem's
local bank; nothing for a network that scores alone, e.g. an autoencoder).

A detector whose rounds train only part of its module (``trained_parts(round_t)``, the
named parts of :meth:`~fedad.detectors.capabilities.Trainable.parts` that can change in
that round; asymst trains its DDPM, its student and its head in turn) has a site upload
only those keys; every payload still carries all the global weights, so a site is always
in step.

Server: the global weights start as the module of a detector drawn with ``train.seed``;
uploads are checked against the round's keys and shapes; the valid ones are combined by
:meth:`WeightExchange.combine` (FedAvg's weighted mean unless an exchange says otherwise;
with ``robust.enabled``, the coordinate-wise trimmed mean of the kept uploads, as Flower's
``FedTrimmedAvg``). BatchNorm's ``num_batches_tracked`` counters never travel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedad.components.states import flat_update, weighted_mean
from fedad.components.training import TrainHooks
from fedad.components.validate import check_state
from fedad.detectors.base import FitInfo, Summary
from fedad.detectors.capabilities import Trainable
from fedad.errors import BankError, ConfigError
from fedad.exchanges.base import Exchange, Upload
from fedad.exchanges.records import Arrays, Records, arrays, tensors

WEIGHTS = "weights"  # the record of model weights, both ways
IMAGES = "#images"  # secure sum term: the training images behind the sum


def trimmed_mean(values: Sequence[np.ndarray], beta: float) -> np.ndarray:
    """Coordinate-wise mean after cutting the ``int(beta * n)`` smallest and largest of the
    ``n`` values (Flower's ``FedTrimmedAvg``; unweighted)."""
    x = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    cut = int(beta * len(values))
    if 2 * cut >= len(values):
        raise ConfigError(f"robust.trim={beta} cuts all of {len(values)} uploads")
    x = np.sort(x, axis=0)[cut:len(values) - cut]
    return x.mean(axis=0)


class WeightExchange(Exchange):
    """Weights of ``detector.module()`` travel; the server averages them."""

    requires = (Trainable,)
    site_model = True
    upload_records = (WEIGHTS,)

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.weights: Arrays = {}  # the global model (server)
        self.reference: dict[str, tuple[int, ...]] = {}  # its shapes, what uploads match
        self.round_t = 0  # site: the round being trained (what it uploads depends on it)

    # -- what travels ------------------------------------------------------------------------
    def local_keys(self, module: torch.nn.Module) -> set[str]:
        """State-dict keys that never leave a site (FedBN: its BatchNorm layers)."""
        return set()

    def keys(self) -> list[str]:
        module = self.detector.module()
        local = self.local_keys(module)
        return [k for k in module.state_dict()
                if not k.endswith("num_batches_tracked") and k not in local]

    def check(self) -> None:
        parts = self.detector.parts(self.cfg)
        for part, p in parts.items():
            p.optim.check(f"detector={self.detector.name}, part {part!r}")
        self.keys()

    def round_keys(self, round_t: int, keys=None) -> list[str]:
        """Those of ``keys`` (default: the exchanged keys) that round ``round_t`` trains: the
        keys of the parts the detector's ``trained_parts`` names (every key before round
        1)."""
        keys = self.keys() if keys is None else list(keys)
        if round_t < 1:
            return keys
        parts = self.detector.parts(self.cfg)
        prefixes = tuple(parts[p].prefix for p in self.detector.trained_parts(round_t))
        return [k for k in keys if k.startswith(prefixes)]

    def module_weights(self, keys: list[str] | None = None) -> Arrays:
        state = self.detector.module().state_dict()
        return arrays({k: state[k] for k in (self.keys() if keys is None else keys)})

    def load_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """The exchanged keys of ``weights`` into the site's module (the others stay)."""
        module = self.detector.module()
        state = module.state_dict()
        missing = [k for k in self.keys() if k not in weights]
        if missing:
            raise ConfigError(f"global weights lack {missing[:3]} ({len(missing)} keys)")
        for k in self.keys():
            state[k] = torch.from_numpy(np.array(weights[k])).to(state[k].dtype).reshape(
                state[k].shape)
        module.load_state_dict(state)

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        self.weights = self.module_weights()
        self.reference = {k: tuple(v.shape) for k, v in self.weights.items()}

    def payload(self, key: int, round_t: int) -> Records:
        return {WEIGHTS: self.weights}

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        super().validate(upload, who, round_t)
        shapes = {k: self.reference[k] for k in self.round_keys(round_t, self.reference)}
        return {WEIGHTS: check_state(upload[WEIGHTS], who, shapes, WEIGHTS)}

    def descriptor(self, upload: Records) -> np.ndarray:
        return flat_update(upload[WEIGHTS], self.weights)

    def combine(self, uploads: Sequence[Upload]) -> Arrays:
        """The new global weights of the keys the valid uploads hold."""
        states = [u.records[WEIGHTS] for u in uploads]
        if self.cfg.robust.enabled:
            return {k: trimmed_mean([s[k] for s in states], self.cfg.robust.trim).astype(
                self.weights[k].dtype) for k in states[0]}
        mean = weighted_mean([tensors(s) for s in states],
                             [u.num_examples for u in uploads])
        return arrays(mean)

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        self.weights = {**self.weights, **self.combine(uploads)}

    # -- secure aggregation (secure.enabled; summable exchanges: the weighted mean) -----------
    def sum_scales(self, round_t: int) -> dict[str, float]:
        """``#images`` (no state-dict key has a ``#``) and ``n_k w_k`` per key the round
        trains, bounded by ``secure.max_images`` and ``secure.bound``."""
        sc = self.cfg.secure
        keys = self.round_keys(round_t, self.reference or None)
        return {IMAGES: float(sc.max_images), **{k: sc.max_images * sc.bound for k in keys}}

    def sum_terms(self, upload: Records, num_examples: int) -> dict[str, np.ndarray]:
        return {IMAGES: np.array([float(num_examples)]),
                **{k: num_examples * np.asarray(v, dtype=np.float64)
                   for k, v in upload[WEIGHTS].items()}}

    def aggregate_sums(self, sums: dict[str, np.ndarray], sites: int, round_t: int) -> None:
        """``w <- sum_k n_k w_k / sum_k n_k`` from the sums alone."""
        n = float(np.asarray(sums[IMAGES]).reshape(-1)[0])
        if not np.isfinite(n) or n < 0.5:
            raise BankError(f"secure sum: {n} training images behind the round's sum")
        new = {k: v / n for k, v in sums.items() if k != IMAGES}
        bad = [k for k, v in new.items() if not np.isfinite(v).all()]
        if bad:
            raise BankError(f"secure sum: non-finite weights in {bad[:3]}")
        self.weights = {**self.weights, **{k: v.astype(self.weights[k].dtype).reshape(
            self.reference[k]) for k, v in new.items()}}

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights, "reference": self.reference}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.weights, self.reference = dict(state["weights"]), dict(state["reference"])

    # -- site ------------------------------------------------------------------------------
    def hooks(self, site_state: dict[str, torch.Tensor], payload: Records) -> TrainHooks | None:
        """What the exchange changes in the site's training steps (None: nothing)."""
        return None

    def fit(self, features: torch.Tensor, payload: Records, round_t: int,
            site_state: dict[str, torch.Tensor]) -> tuple[Records, FitInfo]:
        if WEIGHTS in payload:
            self.load_weights(payload[WEIGHTS])
        self.round_t = round_t
        info = self.detector.fit(features, None, round_t, self.hooks(site_state, payload))
        return self.upload(site_state, payload, info), info

    def upload(self, site_state: dict[str, torch.Tensor], payload: Records,
               info: FitInfo) -> Records:
        return {WEIGHTS: self.module_weights(self.round_keys(self.round_t))}

    def scoring_summary(self, train_features: torch.Tensor, payload: Records) -> Summary:
        if WEIGHTS in payload:
            self.load_weights(payload[WEIGHTS])
        return self.detector.own_summary(train_features)
