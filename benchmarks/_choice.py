"""A value of one config field chosen on the validation split before any test image is
scored: one run per value of a grid fixed in the calling script, scored on the validation
split alone (:func:`benchmarks._inprocess.validation_only`), widened while an edge wins.
``teacher_student.py`` chooses asymst's noise level and SCAFFOLD's rate on the validation
AUROCs; ``diffusion_ad.py`` chooses SCAFFOLD's rate on the held-out denoising loss (its
validation AUROCs do not separate models)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from benchmarks._inprocess import validation_only
from fedad.config.flat import from_flat
from fedad.detectors.registry import resolve
from fedad.federation.centralized import centralized_config
from fedad.federation.compose import check

log = logging.getLogger("fedad")
MEASURES = ("val_i_auroc", "val_p_auroc", "val_score", "val_loss")


def by_auroc(t: dict) -> float | None:
    """The mean of validation image and pixel AUROC (higher wins)."""
    return t.get("val_score")


def by_held_out_loss(t: dict) -> float | None:
    """The objective on the held-out normals, negated (the lower loss wins); none (the
    value loses) when the run's training loss ended above where it began: a diverging run
    whose moving-average weights have not caught up with it yet."""
    ls = t.get("losses") or []
    if t.get("val_loss") is None or (len(ls) > 1 and ls[-1] > ls[0]):
        return None
    return -t["val_loss"]


def choose_on_validation(base: dict, payload: dict, write: Callable[[dict], None], *,
                         field: str, record: str, grid: Sequence[float],
                         changes: Callable[[float], dict],
                         widen: Callable[[list[float], float], float | None],
                         how: str, criterion: Callable[[dict], float | None] = by_auroc
                         ) -> float:
    """The value of ``field`` chosen on the validation split: one centralized run of
    ``base`` with ``changes(value)`` per value of ``grid``, scored on the validation split
    alone; the highest ``criterion`` wins (the lower value on ties; a run that fails or
    whose criterion is not finite loses, with the reason kept), and while
    ``widen(grid, winner)`` names a value it joins the grid. Kept in ``payload[record]``
    (values already tried are read back, not re-run) and written (``write(payload)``)
    before any row runs."""
    done = {float(t[field]): t for t in payload.get(record, {}).get("tried", [])}

    def tried(value: float) -> dict:
        if value not in done:
            cfg = centralized_config(from_flat({**base, **changes(value)}))
            cfg.examples = 0
            t = time.perf_counter()
            try:
                r = validation_only(check(resolve(cfg)))
            except (ArithmeticError, RuntimeError, ValueError) as exc:  # e.g. diverged
                r = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
            c = criterion(r)
            ok = c is not None and bool(np.isfinite(c))
            done[value] = {field: value, **{k: r.get(k) for k in MEASURES},
                           "losses": [float(v) for v in r.get("losses", [])],
                           "seconds": time.perf_counter() - t,
                           **({} if ok else {"failed": r.get(
                               "failed", f"rejected by {criterion.__name__} (its docstring "
                                         "says when)")})}
            log.info("%s %.3g: validation %s%s", field, value, ", ".join(
                f"{k} {r[k]:.4f}" for k in MEASURES if r.get(k) is not None),
                "" if ok else f" ({done[value]['failed']})")
        return done[value]

    def key(t: dict) -> tuple:  # a failed or rejected value loses (its measures may be NaN)
        return (-np.inf if "failed" in t else criterion(t), -t[field])

    grid = sorted(grid)
    while True:
        best = max((tried(v) for v in grid), key=key)[field]
        wider = widen(grid, best)
        if wider is None:
            break
        grid = sorted([*grid, wider])
    payload[record] = {"chosen": best, "grid": grid, "tried": [done[v] for v in grid],
                       "how": how}
    write(payload)
    return float(best)


def widen_rate(low: float, high: float) -> Callable[[list[float], float], float | None]:
    """A learning-rate grid's widening: a winner at either edge adds the rate a factor 3
    beyond it, within ``[low, high]``."""
    def widen(grid: list[float], best: float) -> float | None:
        if best == grid[-1] and best * 3 <= high:
            return round(best * 3, 4)
        if best == grid[0] and best / 3 >= low:
            return round(best / 3, 5)
        return None
    return widen
