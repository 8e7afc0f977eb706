"""Greedy coreset subsampling (PatchCore, Roth et al. 2022, Sec. 3.2 and Alg. 1).

Greedy k-center (Gonzalez 1985): start from one row, then repeatedly add the row farthest from
the rows chosen so far. Distances are taken in a seeded Gaussian random projection of the
features (Johnson-Lindenstrauss, as the paper does to speed up selection); the chosen rows
are returned as indices into the original features.

The selection is *exact*: the same rows, in the same order, as the textbook loop that updates
every row's distance to the selected set after each pick (up to exact ties and float
rounding). That loop is memory-bound (one pass over all rows per pick: for 600k x 128 features
and a 10% coreset, 60k passes, over 20 minutes on two cores). Metric pruning (triangle
inequality over cells) does not help on real patch features: their intrinsic dimension is
high, cell radii stay comparable to the covering radius, and most cells are touched at every
pick. What is exact and fast is *laziness*:

* every row keeps ``d``, its squared distance to the first ``stamp`` selected rows: an upper
  bound of its distance to the whole selected set (distances only shrink as rows are added);
* only the rows whose bound is at least a threshold ``tau`` are *active* (exact, updated
  after every pick, a small matrix-vector product); while the largest active distance is
  ``>= tau`` it is the global maximum, since every inactive row is below ``tau``;
* when it falls below ``tau``, ``tau`` is lowered to the ``pool``-th largest bound and the rows
  above it are *caught up* against the picks they missed, in blocks (matrix-matrix products,
  compute-bound), a row leaving its catch-up as soon as it falls below the new ``tau``.

A row is caught up only when the threshold sweeps past its bound, a few times over a run, so
the work becomes matrix-matrix products at full speed instead of one memory-bound pass per
pick (measured: 596,624 x 152 MTD patches, 10% coreset, 35-40 s on two cores; see
``benchmarks/coreset.py``). Arithmetic is float32 (squared distances by the
``|x|^2 - 2 x.c + |c|^2`` expansion on centred rows), so "exact" means up to near-ties at
float32 rounding (relative gaps of about 1e-7).

Greedy k-center is prefix-consistent: the first ``k`` rows of a size-``K`` selection are the
size-``k`` selection. And a selection's rows, selected again from themselves with the same
projection and start, come back in the same order. The default start (the row of largest
norm) is the same on any subset that holds it, which is what makes a federated merge of one
client's coreset equal the centralized coreset.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedad.errors import ConfigError

_POOL = 16_384  # rows whose bounds are caught up at each refill
_ROW_BLOCK = 1024  # rows caught up together
_PICK_BLOCK = 1024  # selected rows per matrix product of a catch-up
_SELECTED = -1.0  # distance stored for selected rows: never picked again


def random_projection(dim: int, projection_dim: int, seed: int = 0) -> torch.Tensor | None:
    """Seeded Gaussian projection ``(dim, projection_dim)`` with entries ``N(0, 1/p)`` (so
    distances are preserved in expectation), or ``None`` when ``dim <= projection_dim``."""
    if projection_dim <= 0 or dim <= projection_dim:
        return None
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(dim, projection_dim, generator=g, dtype=torch.float64)
    return w / math.sqrt(projection_dim)


def project(features: torch.Tensor, projection_dim: int = 128, seed: int = 0,
            chunk: int = 65_536) -> np.ndarray:
    """The float32 rows greedy selection works on: ``features @ random_projection``,
    computed in float64 (in chunks of rows) and then rounded, so that a row's projection does
    not depend on the other rows."""
    x = torch.as_tensor(features).detach()
    w = random_projection(x.shape[1], projection_dim, seed)
    out = np.empty((x.shape[0], x.shape[1] if w is None else w.shape[1]), np.float32)
    for a in range(0, x.shape[0], chunk):
        part = x[a:a + chunk].to("cpu", torch.float64)
        out[a:a + chunk] = (part if w is None else part @ w).to(torch.float32).numpy()
    return out


def default_start(features: torch.Tensor, chunk: int = 65_536) -> int:
    """First selected row: the row of largest norm (smallest index on ties). A function of
    the row alone, so any subset holding it starts at the same row."""
    x = torch.as_tensor(features).detach()
    norms = torch.cat([x[a:a + chunk].to("cpu", torch.float64).square().sum(1)
                       for a in range(0, x.shape[0], chunk)])
    return int(torch.argmax(norms))


def greedy_coreset(features: torch.Tensor, size: int, projection_dim: int = 128, seed: int = 0,
                   start: int | None = None) -> torch.Tensor:
    """Indices (int64, in selection order) of a greedy k-center coreset of ``size`` rows of
    ``features`` ``(N, D)`` (PatchCore Alg. 1), selected in a ``projection_dim``-dim seeded
    Gaussian projection (none when ``D <= projection_dim``).

    Args:
        features: ``(N, D)`` rows, any float dtype.
        size: rows to select, ``1 <= size <= N``.
        projection_dim: dimension of the random projection used for selection.
        seed: seed of the projection.
        start: first row; default :func:`default_start` (largest norm).

    Raises:
        ConfigError: on an empty, non-2-D or non-finite input, or ``size`` or ``start`` out
            of range.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ConfigError(f"greedy_coreset needs (N, D) rows, got shape {tuple(features.shape)}")
    n = int(features.shape[0])
    if not 1 <= size <= n:
        raise ConfigError(f"greedy_coreset: size {size} not in [1, {n}]")
    first = default_start(features) if start is None else int(start)
    if not 0 <= first < n:
        raise ConfigError(f"greedy_coreset: start {first} not in [0, {n})")
    y = project(features, projection_dim, seed)
    if not np.isfinite(y).all():
        raise ConfigError("greedy_coreset: features hold NaN/inf (or overflow float32)")
    return torch.from_numpy(_LazyGreedy(y).run(size, first))


class _LazyGreedy:
    """Exact greedy k-center with lazily updated distances (see the module docstring)."""

    def __init__(self, y: np.ndarray, pool: int | None = None) -> None:
        """``y``: the projected float32 rows, centred in place (smaller norms, less rounding
        in the ``|x|^2 - 2 x.c + |c|^2`` expansion)."""
        self.y = np.ascontiguousarray(y, dtype=np.float32)
        self.y -= self.y.mean(0, dtype=np.float64).astype(np.float32)
        self.yt = torch.from_numpy(self.y)
        self.norms = np.einsum("ij,ij->i", self.y, self.y)
        self.pool = int(_POOL if pool is None else pool)

    def run(self, size: int, first: int) -> np.ndarray:
        n, p = self.y.shape
        self.picks = np.empty((size, p), np.float32)
        self.pick_norms = np.empty(size, np.float32)
        chosen = np.empty(size, np.int64)
        self.d = np.empty(n, np.float32)  # squared distance to picks[:stamp] (upper bound)
        self.stamp = np.ones(n, np.int64)
        self._pick(chosen, 0, first)
        dist = self.norms - 2.0 * (self.y @ self.picks[0]) + self.pick_norms[0]
        np.maximum(dist, 0.0, out=self.d)
        self.d[first] = _SELECTED
        self.tau = math.inf
        self.active = np.empty(0, np.int64)
        self.da = np.empty(0, np.float32)
        for k in range(1, size):
            j = self._argmax(k)
            row = int(self.active[j])
            self._pick(chosen, k, row)
            self.da[j] = _SELECTED
            self._update_active(k)
        return chosen

    def _pick(self, chosen: np.ndarray, k: int, row: int) -> None:
        chosen[k] = row
        self.picks[k] = self.y[row]
        self.pick_norms[k] = self.norms[row]

    def _argmax(self, k: int) -> int:
        """Position in the active set of the farthest row, refilling until it is ``>= tau``."""
        while True:
            if self.da.size:
                j = int(np.argmax(self.da))
                if self.da[j] >= self.tau:
                    return j
            self._refill(k)

    def _update_active(self, k: int) -> None:
        """Distances of the active rows to pick ``k``; drop rows that fell below ``tau``."""
        dist = self.ya @ self.picks[k]
        dist *= -2.0
        dist += self.na
        dist += self.pick_norms[k]
        np.minimum(self.da, np.maximum(dist, 0.0, out=dist), out=self.da)
        keep = self.da >= self.tau
        dropped = keep.size - int(np.count_nonzero(keep))
        if dropped and 2 * dropped >= keep.size:
            out = self.active[~keep]
            self.d[out] = self.da[~keep]
            self.stamp[out] = k + 1
            self._set_active(self.active[keep], self.da[keep])

    def _set_active(self, rows: np.ndarray, dist: np.ndarray) -> None:
        self.active = rows
        self.da = np.ascontiguousarray(dist, dtype=np.float32)
        self.ya = self.y[rows]
        self.na = self.norms[rows]

    def _refill(self, k: int) -> None:
        """Lower ``tau`` to the ``pool``-th largest bound and catch up the rows above it."""
        self.d[self.active] = self.da
        self.stamp[self.active] = k
        n = self.d.size
        m = min(self.pool, n - k)  # unselected rows (selected ones hold -1, the smallest)
        tau = float(np.partition(self.d, n - m)[n - m])
        rows = np.flatnonzero(self.d >= tau)
        self._catch_up(rows, k, tau)
        keep = rows[self.d[rows] >= tau]
        self.tau = tau
        self._set_active(keep, self.d[keep])

    def _catch_up(self, rows: np.ndarray, k: int, tau: float) -> None:
        """Exact distances of ``rows`` to ``picks[:k]`` (those they missed), a row stopping as
        soon as it is below ``tau`` (its stamp then says how far it got)."""
        rows = rows[np.argsort(self.stamp[rows], kind="stable")]
        picks = torch.from_numpy(self.picks)
        pick_norms = torch.from_numpy(self.pick_norms)
        for a in range(0, rows.size, _ROW_BLOCK):
            r = rows[a:a + _ROW_BLOCK]
            lo = int(self.stamp[r[0]])
            if lo >= k:
                continue
            yr = self.yt[torch.from_numpy(r)]
            nr = torch.from_numpy(self.norms[r])
            dr = torch.from_numpy(self.d[r])
            for b in range(lo, k, _PICK_BLOCK):
                e = min(b + _PICK_BLOCK, k)
                near = torch.addmm(pick_norms[b:e][None], yr, picks[b:e].T, alpha=-2.0).amin(1)
                dr = torch.minimum(dr, (near + nr).clamp_(min=0.0))
                low = dr < tau
                if bool(low.any()):
                    out = low.numpy()
                    self.d[r[out]] = dr.numpy()[out]
                    self.stamp[r[out]] = np.maximum(self.stamp[r[out]], e)
                    stay = ~low
                    r, yr, nr, dr = r[~out], yr[stay], nr[stay], dr[stay]
                    if r.size == 0:
                        break
            if r.size:
                self.d[r] = dr.numpy()
                self.stamp[r] = k


def covering_radius(features: torch.Tensor, indices: torch.Tensor, chunk: int = 4096,
                    block: int = 2048) -> float:
    """Max over all rows of ``features`` of the distance to the nearest selected row
    (``indices``), in the original space: the minimax objective the coreset approximates
    (Sec. 3.2; greedy k-center is within a factor 2 of its optimum).

    Exact (float32), in chunks of rows against blocks of selected rows (matrix products on
    centred rows); a row leaves as soon as it is no farther than the worst row found so far,
    since it can no longer raise the maximum."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float32)
    idx = torch.as_tensor(indices).to("cpu", torch.int64).reshape(-1)
    if idx.numel() == 0:
        raise ConfigError("covering_radius: no selected rows")
    # selected rows in a fixed random order: every block is then spread over the data, so a
    # row meets a near one early and leaves (selection order: early picks are outliers)
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
    mean = x.mean(0, dtype=torch.float64).to(torch.float32)
    picks = x[idx] - mean
    pick_norms = picks.square().sum(1)
    worst = 0.0  # squared
    for a in range(0, x.shape[0], chunk):
        rows = x[a:a + chunk] - mean
        norms = rows.square().sum(1)
        d = torch.full((rows.shape[0],), math.inf)
        for b in range(0, picks.shape[0], block):
            near = torch.addmm(pick_norms[b:b + block][None], rows, picks[b:b + block].T,
                               alpha=-2.0).amin(1)
            d = torch.minimum(d, near + norms)
            alive = d > worst
            if not bool(alive.all()):
                rows, norms, d = rows[alive], norms[alive], d[alive]
                if d.numel() == 0:
                    break
        if d.numel():
            worst = max(worst, float(d.max()))
    return math.sqrt(max(worst, 0.0))
