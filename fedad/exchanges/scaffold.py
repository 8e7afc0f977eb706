"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", Alg. 1 with option II for the control-variate update).

Notation as in the paper: ``x`` global model, ``y_i`` client ``i``'s model after ``K`` local
steps with learning rate ``eta_l``, ``c`` server and ``c_i`` client control variates, ``S``
the sampled clients, ``N`` all clients, ``eta_g`` the global learning rate. States are dicts
of tensors keyed by parameter name; control variates cover the trainable parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fedad.components.states import StateError, cast_like, check_compatible, weighted_mean
from fedad.components.training import OptimSpec, TrainHooks, part_of
from fedad.components.validate import check_state
from fedad.config.schema import RunConfig
from fedad.detectors.base import FitInfo
from fedad.detectors.capabilities import Budgeted
from fedad.errors import ConfigError
from fedad.exchanges.base import Upload
from fedad.exchanges.records import Records, arrays, tensors
from fedad.exchanges.weights import WEIGHTS, WeightExchange


def zeros_like_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Zero tensors shaped like ``state``'s entries (the initial ``c`` and ``c_i``)."""
    return {k: torch.zeros_like(v.detach()) for k, v in state.items()}


def correct_gradients(named_params: Iterable[tuple[str, Tensor]],
                      c_local: Mapping[str, Tensor], c_global: Mapping[str, Tensor]) -> None:
    """Alg. 1 line 10's correction, in place: ``p.grad += c - c_i`` for every parameter
    with a gradient (call between ``loss.backward()`` and ``optimizer.step()``).

    Raises:
        StateError (a ValueError): a parameter with a gradient lacks a control variate.
    """
    with torch.no_grad():
        for name, p in named_params:
            if p.grad is None:
                continue
            for which, c in (("c_local", c_local), ("c_global", c_global)):
                if name not in c:
                    raise StateError(f"parameter {name!r} has a gradient but no {which} entry")
            p.grad.add_(c_global[name].to(p.grad) - c_local[name].to(p.grad))


def client_control_update(
    c_local: Mapping[str, Tensor], c_global: Mapping[str, Tensor],
    x_global: Mapping[str, Tensor], y_local: Mapping[str, Tensor], steps: int, lr: float,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Alg. 1 lines 12-13 with option II: ``c_i+ = c_i - c + (x - y_i) / (K * eta_l)``.

    Returns ``(c_i+, delta_c, delta_y)`` with ``delta_c = c_i+ - c_i`` over ``c_local``'s
    keys and ``delta_y = y_i - x`` over ``x_global``'s keys (all of them, buffers included;
    integer buffers give integer differences). Math in float64, cast back to each dtype.

    Raises:
        ConfigError (a ValueError): ``steps < 1`` or ``lr`` not positive and finite.
        StateError (a ValueError): keys or shapes that do not match.
    """
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"SCAFFOLD needs steps >= 1 local steps, got {steps}")
    if not math.isfinite(float(lr)) or lr <= 0:
        raise ConfigError(f"SCAFFOLD needs a positive local learning rate, got {lr}")
    check_compatible([x_global, y_local], "model")
    check_compatible([c_local, c_global], "control variate")
    for k in c_local:
        if k not in x_global:
            raise StateError(f"control variate {k!r} has no entry in the global model")
        if tuple(x_global[k].shape) != tuple(c_local[k].shape):
            raise StateError(f"key {k!r}: control variate shape {tuple(c_local[k].shape)} "
                             f"but model shape {tuple(x_global[k].shape)}")
    scale = 1.0 / (steps * float(lr))
    c_new: dict[str, Tensor] = {}
    delta_c: dict[str, Tensor] = {}
    delta_y: dict[str, Tensor] = {}
    with torch.no_grad():
        for k, ci in c_local.items():
            ci64 = ci.detach().double()
            x64 = x_global[k].detach().to(ci64)
            y64 = y_local[k].detach().to(ci64)
            new64 = ci64 - c_global[k].detach().to(ci64) + (x64 - y64) * scale
            c_new[k] = cast_like(new64, ci)
            delta_c[k] = cast_like(new64 - ci64, ci)
        for k, x in x_global.items():
            x64 = x.detach().double()
            delta_y[k] = cast_like(y_local[k].detach().to(x64) - x64, x)
    return c_new, delta_c, delta_y


def server_update(
    x_global: Mapping[str, Tensor], c_global: Mapping[str, Tensor],
    delta_ys: Sequence[Mapping[str, Tensor]], delta_cs: Sequence[Mapping[str, Tensor]],
    num_clients: int, global_lr: float = 1.0,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Alg. 1 lines 16-17: ``x <- x + eta_g * mean_S(delta_y)`` and
    ``c <- c + (|S| / N) * mean_S(delta_c)`` (i.e. ``c + sum_S(delta_c) / N``).

    Entries of ``x_global`` (or ``c_global``) absent from the deltas are returned unchanged.
    Means are unweighted, as in the paper; math in float64, integer entries rounded.

    Raises:
        ConfigError (a ValueError): ``num_clients < |S|`` or a bad ``global_lr``.
        StateError (a ValueError): no deltas, unequal counts, or mismatched keys/shapes.
    """
    n_s = len(delta_ys)
    if n_s == 0:
        raise StateError("no client updates to aggregate")
    if len(delta_cs) != n_s:
        raise StateError(f"{n_s} model deltas but {len(delta_cs)} control-variate deltas")
    if num_clients < n_s:
        raise ConfigError(f"num_clients (N={num_clients}) is below the {n_s} participants")
    if not math.isfinite(float(global_lr)) or global_lr <= 0:
        raise ConfigError(f"SCAFFOLD needs a positive global learning rate, got {global_lr}")

    def apply(base: Mapping[str, Tensor], deltas: Sequence[Mapping[str, Tensor]],
              factor: float, what: str) -> dict[str, Tensor]:
        check_compatible(deltas, what)
        out = {k: v.detach().clone() for k, v in base.items()}
        with torch.no_grad():
            # equal weights: the plain mean; kept in float64 so integer deltas are not rounded
            mean = weighted_mean([{k: v.double() for k, v in d.items()} for d in deltas],
                                 [1.0] * len(deltas))
            for k, m in mean.items():
                if k not in base:
                    raise StateError(f"{what} key {k!r} is not in the global state")
                b = base[k]
                if tuple(b.shape) != tuple(m.shape):
                    raise StateError(f"key {k!r}: {what} shape {tuple(m.shape)} but global "
                                     f"shape {tuple(b.shape)}")
                b64 = b.detach().double()
                out[k] = cast_like(b64 + factor * m.to(b64), b)
        return out

    x_new = apply(x_global, delta_ys, float(global_lr), "model delta")
    c_new = apply(c_global, delta_cs, n_s / num_clients, "control-variate delta")
    return x_new, c_new


# -- the exchange ----------------------------------------------------------------------------


CONTROL = "control"  # the server's control variate c, sent with the weights
CONTROL_DELTA = "control-delta"  # a site's delta c_i, uploaded with its weights
SITE_CONTROL = "c_i"  # prefix of the site's own control variate in its state


def part_rates(cfg: RunConfig, parts: Sequence[str]) -> dict[str, float]:
    """SCAFFOLD's plain-SGD learning rate of every part: ``scaffold.lr`` unless
    ``scaffold.part_lr`` names the part (``"<part>=<lr>"``).

    Raises:
        ConfigError: a malformed entry, a part the detector does not have, or a rate that
            is not positive and finite, naming it.
    """
    sc = cfg.scaffold
    rates = dict.fromkeys(parts, float(sc.lr))
    for item in sc.part_lr:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        try:
            rate = float(value) if sep else float("nan")
        except ValueError:
            rate = float("nan")
        if name not in rates:
            raise ConfigError(f"scaffold.part_lr: {item!r} names no part of the detector's "
                              f"module (its parts: {', '.join(parts)}; write '<part>=<lr>')")
        rates[name] = rate
    bad = {k: v for k, v in rates.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ConfigError("scaffold: plain SGD needs a positive learning rate per part, got "
                          + ", ".join(f"{k}={v}" for k, v in bad.items())
                          + " (scaffold.lr, scaffold.part_lr)")
    return rates


class ScaffoldExchange(WeightExchange):
    """Alg. 1 with option II: sites correct every gradient by ``c - c_i`` and step with
    plain SGD at SCAFFOLD's own learning rate per part (:func:`part_rates`), and upload
    their weights and ``delta c_i``; the server steps ``x`` by ``eta_g`` times the mean
    update and ``c`` by ``sum(delta c_i) / N``."""

    name = "scaffold"
    upload_records = (WEIGHTS, CONTROL_DELTA)

    def __init__(self, cfg, detector) -> None:
        super().__init__(cfg, detector)
        self.control: dict[str, np.ndarray] = {}  # the server's c

    def rates(self) -> dict[str, float]:
        """The plain-SGD learning rate of each part of the detector's module."""
        return part_rates(self.cfg, list(self.detector.parts(self.cfg)))

    def check(self) -> None:
        super().check()
        self.rates()

    def control_keys(self) -> list[str]:
        """Trainable parameters among the exchanged keys (what control variates cover)."""
        keys = set(self.keys())
        return [k for k, _ in self.detector.module().named_parameters() if k in keys]

    # -- server ----------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self.control = {k: np.zeros_like(self.weights[k]) for k in self.control_keys()}

    def payload(self, key: int, round_t: int) -> Records:
        return {WEIGHTS: self.weights, CONTROL: self.control}

    def evaluation_payload(self, key: int) -> Records:
        return {WEIGHTS: self.weights}

    def validate(self, upload: Records, who: str, round_t: int) -> Records:
        out = super().validate(upload, who, round_t)
        keys = set(self.round_keys(round_t, self.control))
        shapes = {k: tuple(v.shape) for k, v in self.control.items() if k in keys}
        return {**out, CONTROL_DELTA: check_state(upload[CONTROL_DELTA], who, shapes,
                                                  CONTROL_DELTA)}

    def aggregate(self, uploads: Sequence[Upload], round_t: int) -> None:
        x = tensors(self.weights)
        delta_ys = [{k: torch.from_numpy(np.asarray(v)) - x[k]
                     for k, v in u.records[WEIGHTS].items()} for u in uploads]
        x_new, c_new = server_update(x, tensors(self.control), delta_ys,
                                     [tensors(u.records[CONTROL_DELTA]) for u in uploads],
                                     self.cfg.num_clients, self.cfg.train.global_lr)
        self.weights, self.control = arrays(x_new), arrays(c_new)

    def state(self) -> dict:
        return {**super().state(), "control": self.control}

    def load_state(self, state) -> None:
        super().load_state(state)
        self.control = dict(state["control"])

    # -- site ------------------------------------------------------------------------------
    def _site_control(self, site_state: dict[str, Tensor]) -> dict[str, Tensor]:
        mine = {k[len(SITE_CONTROL) + 1:]: v for k, v in site_state.items()
                if k.startswith(SITE_CONTROL + ".")}
        if not mine:  # c_i = 0 at the start (Alg. 1 line 1)
            params = dict(self.detector.module().named_parameters())
            mine = zeros_like_state({k: params[k].detach() for k in self.control_keys()})
        return mine

    def hooks(self, site_state: dict[str, Tensor], payload: Records) -> TrainHooks:
        if CONTROL not in payload:
            raise ConfigError("scaffold: the server sent no control variate")
        c_local, c_global = self._site_control(site_state), tensors(payload[CONTROL])
        self._x = {k: v.detach().clone() for k, v in self.detector.module().named_parameters()
                   if k in c_local}
        self._c = (c_local, c_global)
        rates = self.rates()
        return TrainHooks(after_backward=lambda m: correct_gradients(m.named_parameters(),
                                                                     c_local, c_global),
                          optimizer=lambda part, own: OptimSpec("sgd", rates[part]))

    def upload(self, site_state: dict[str, Tensor], payload: Records,
               info: FitInfo) -> Records:
        c_local, c_global = self._c
        # the parameters this round trained (all, unless the detector trains its module
        # part by part: the others' c_i and x stay as they are)
        keys = set(self.round_keys(self.round_t))
        mine = {k: v for k, v in c_local.items() if k in keys}
        if info.steps > 0:
            y = {k: v.detach().clone() for k, v in self.detector.module().named_parameters()
                 if k in mine}
            parts, rates = self.detector.parts(self.cfg), self.rates()
            # under a step budget's schedule the rate of a step varies: K * eta_l is the
            # sum of the rates stepped, the mean multiplier times K
            scale = (self.detector.lr_scale(self.round_t)
                     if isinstance(self.detector, Budgeted) else 1.0)
            new, delta_c = {}, {}
            for part in sorted({part_of(k, parts) for k in mine}):  # each at its own rate
                keys = [k for k in mine if part_of(k, parts) == part]
                got, dc, _ = client_control_update(
                    {k: mine[k] for k in keys}, {k: c_global[k] for k in keys},
                    {k: self._x[k] for k in keys}, {k: y[k] for k in keys}, info.steps,
                    rates[part] * scale)
                new.update(got)
                delta_c.update(dc)
            c_local = {**c_local, **new}
        else:  # no step taken (e.g. a one-image site with BatchNorm): c_i unchanged
            delta_c = zeros_like_state(mine)
        site_state.update({f"{SITE_CONTROL}.{k}": v.clone() for k, v in c_local.items()})
        return {**super().upload(site_state, payload, info), CONTROL_DELTA: arrays(delta_c)}
