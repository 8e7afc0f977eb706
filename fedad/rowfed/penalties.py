"""The non-convex penalties of SROF and their proximal operators (pure NumPy).

A penalty ``P(r)`` of a magnitude ``r >= 0`` (an entry's ``|b|`` or a row difference's
``||theta||_2``):

* SCAD (Fan and Li 2001, ``a > 2``; ``a = 3.7`` by default, theirs and FPFC's):
  ``lam r`` up to ``lam``, ``(2 a lam r - r^2 - lam^2) / (2 (a - 1))`` up to ``a lam``,
  then the constant ``lam^2 (a + 1) / 2``;
* MCP (Zhang 2010, ``gamma > 1``; 3 by default): ``lam r - r^2 / (2 gamma)`` up to
  ``gamma lam``, then ``gamma lam^2 / 2``;
* L1 (``lam r``): the convex baseline (the group lasso on a row).

``prox(z) = argmin_{r >= 0} (rho / 2) (r - z)^2 + P(r)`` has a closed form when the
objective is convex in ``r``: ``rho (a - 1) > 1`` for SCAD, ``rho gamma > 1`` for MCP (the
conditions are checked). A vector's penalty of its norm is radial, so its prox scales the
vector by the prox of its norm (:func:`prox_group`); the entrywise prox keeps the sign
(:func:`prox_entries`).
"""

from __future__ import annotations

import numpy as np

KINDS = ("scad", "mcp", "l1")


def _check(kind: str, lam: float, rho: float, a: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"penalty must be one of {KINDS}, got {kind!r}")
    rho = np.min(rho)  # a scalar, or one per client (batched steps): the smallest decides
    if lam < 0 or rho <= 0:
        raise ValueError(f"need lam >= 0 and rho > 0, got {lam}, {rho}")
    if kind == "scad" and not (a > 2 and rho * (a - 1) > 1):
        raise ValueError(f"SCAD needs a > 2 and rho (a - 1) > 1 for a unique prox; got "
                         f"a={a}, rho={rho}")
    if kind == "mcp" and not (a > 1 and rho * a > 1):
        raise ValueError(f"MCP needs gamma > 1 and rho gamma > 1 for a unique prox; got "
                         f"gamma={a}, rho={rho}")


def penalty(r: np.ndarray, kind: str, lam: float, a: float = 3.7) -> np.ndarray:
    """``P(r)`` elementwise for magnitudes ``r >= 0``."""
    r = np.abs(np.asarray(r, dtype=float))
    if kind == "l1":
        return lam * r
    if kind == "scad":
        mid = (2 * a * lam * r - r * r - lam * lam) / (2 * (a - 1))
        return np.where(r <= lam, lam * r, np.where(r <= a * lam, mid,
                                                    lam * lam * (a + 1) / 2))
    if kind == "mcp":
        return np.where(r <= a * lam, lam * r - r * r / (2 * a), a * lam * lam / 2)
    raise ValueError(f"penalty must be one of {KINDS}, got {kind!r}")


def prox_magnitude(z: np.ndarray, kind: str, lam: float, rho: float,
                   a: float = 3.7) -> np.ndarray:
    """``argmin_{r >= 0} (rho / 2)(r - z)^2 + P(r)`` elementwise for ``z >= 0``."""
    _check(kind, lam, rho, a)
    z = np.asarray(z, dtype=float)
    soft = np.maximum(z - lam / rho, 0.0)
    if kind == "l1":
        return soft
    if kind == "scad":
        mid = (rho * (a - 1) * z - a * lam) / (rho * (a - 1) - 1)
        return np.where(z <= lam + lam / rho, soft, np.where(z <= a * lam, mid, z))
    mid = soft / (1 - 1 / (rho * a))  # mcp
    return np.where(z <= a * lam, mid, z)


def prox_group(delta: np.ndarray, kind: str, lam: float, rho: float,
               a: float = 3.7) -> np.ndarray:
    """``argmin_theta (rho / 2) ||theta - delta||^2 + P(||theta||)`` for each row of
    ``delta`` ``(..., q)``: the row scaled by ``prox(||delta||) / ||delta||``."""
    delta = np.asarray(delta, dtype=float)
    norm = np.linalg.norm(delta, axis=-1, keepdims=True)
    r = prox_magnitude(norm, kind, lam, rho, a)
    scale = np.divide(r, norm, out=np.zeros_like(norm), where=norm > 0)
    return delta * scale


def prox_entries(b: np.ndarray, kind: str, lam: float, rho: float,
                 a: float = 3.7) -> np.ndarray:
    """``argmin_x (rho / 2) ||x - b||^2 + sum P(|x_i|)``: each entry's magnitude proxed,
    its sign kept."""
    b = np.asarray(b, dtype=float)
    return np.sign(b) * prox_magnitude(np.abs(b), kind, lam, rho, a)
