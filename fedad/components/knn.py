"""Exact nearest-neighbour search over a fixed set of rows.

Two paths with the same answers (within float32 rounding):

* :class:`NearestNeighbours`: faiss ``IndexFlatL2`` (a GPU index when faiss-gpu is importable
  and CUDA is present), no gradient: the fast path every detector scores with;
* :func:`torch_knn`: the same search in torch, chunked over queries and over the bank
  (:func:`chunked_nearest`) so the full distance matrix is never allocated, with gradients
  flowing to the queries: the differentiable path (a refinement that optimises an image
  against a detector's score needs it) and what an exported ONNX scorer runs
  (:mod:`fedad.export`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

import faiss
import numpy as np
import torch

from fedad.components.rows import as_rows
from fedad.errors import ConfigError


@lru_cache(maxsize=1)
def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees a GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken CUDA setups
        return False


@lru_cache(maxsize=1)
def _gpu_resources():  # pragma: no cover - needs a GPU
    return faiss.StandardGpuResources()


def as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A contiguous float32 numpy copy (or view) of ``x``, what faiss takes."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class NearestNeighbours:
    """Exact L2 nearest-neighbour search over a fixed bank (faiss ``IndexFlatL2``)."""

    def __init__(self, bank: torch.Tensor | np.ndarray, use_gpu: bool | None = None) -> None:
        feats = as_float32(as_rows(bank))
        self.size, self.dim = feats.shape
        index = faiss.IndexFlatL2(self.dim)
        if (faiss_gpu_available() if use_gpu is None else use_gpu):  # pragma: no cover
            index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
        index.add(feats)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances and indices ``(N, k)`` of each query's ``k`` nearest rows,
        nearest first."""
        if k > self.size:
            raise ConfigError(f"top_k={k} exceeds the bank size {self.size}")
        q = as_float32(queries.reshape(-1, self.dim))
        d2, idx = self.index.search(q, k)
        dist = torch.from_numpy(np.sqrt(np.maximum(d2, 0.0)))
        return dist, torch.from_numpy(idx.astype(np.int64))


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off exact k-nearest-neighbour search; see :class:`NearestNeighbours`."""
    return NearestNeighbours(bank).search(queries, k)


BANK_CHUNK = 4096  # bank rows one distance block spans (torch paths), by default
_BANK_CHUNK: ContextVar[int] = ContextVar("fedad_knn_bank_chunk", default=BANK_CHUNK)


@contextmanager
def bank_chunk(rows: int) -> Iterator[None]:
    """Within the block, :func:`torch_knn` walks banks in blocks of ``rows`` rows (what a
    caller that cannot pass it through a detector's ``score_features`` sets, e.g. the ONNX
    exporter's ``--chunk``).

    Raises:
        ConfigError: ``rows < 1``.
    """
    if rows < 1:
        raise ConfigError(f"k-NN bank chunk must be >= 1, got {rows}")
    token = _BANK_CHUNK.set(int(rows))
    try:
        yield
    finally:
        _BANK_CHUNK.reset(token)


def _exporting() -> bool:
    """True while torch traces or exports a graph (ONNX, ``torch.export``): the number of
    query blocks then depends on the batch size the graph takes, so it must not be
    unrolled into the graph."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
                or torch.compiler.is_exporting())


def chunked_nearest(queries: torch.Tensor, bank: torch.Tensor, k: int,
                    chunk: int = BANK_CHUNK) -> torch.Tensor:
    """Indices ``(Q, k)`` of each query's ``k`` nearest rows of ``bank`` ``(M, C)``
    (squared L2 by ``|x|^2 - 2xy + |y|^2``, no gradient), without ever allocating the
    ``(Q, M)`` distance matrix: the bank is walked in blocks of ``chunk`` rows, each
    block's ``(Q, chunk)`` distances are reduced to their ``k`` smallest (a minimum
    for ``k = 1``) and merged into a running ``(Q, k)`` best. The loop runs over the bank,
    whose size is fixed, so a traced or exported graph unrolls it into
    ``ceil(M / chunk)`` blocks whose largest intermediate is ``(Q, chunk)``. The
    chosen rows are those of a full search up to exact ties (the order within the ``k`` is
    not guaranteed: the caller sorts by exact distances).

    Raises:
        ConfigError: ``k`` exceeds the bank's rows, or ``chunk < 1``.
    """
    if chunk < 1:
        raise ConfigError(f"k-NN bank chunk must be >= 1, got {chunk}")
    m = bank.shape[0]
    if k > m:
        raise ConfigError(f"top_k={k} exceeds the bank size {m}")
    with torch.no_grad():
        q = queries.detach()
        sq_q = (q * q).sum(dim=1, keepdim=True)
        best_d: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for start in range(0, m, chunk):
            rows = bank[start:start + chunk]
            d2 = sq_q - 2 * q @ rows.T + (rows * rows).sum(dim=1)
            d, i = _smallest(d2, min(k, rows.shape[0]))
            i = i + start
            if best_d is not None:
                d, pick = _smallest(torch.cat([best_d, d], dim=1), k)
                i = torch.cat([best_i, i], dim=1).gather(1, pick)
            best_d, best_i = d, i
        assert best_i is not None  # m >= k >= 1
        return best_i


def _smallest(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest values of each row of ``d`` and their columns (``min`` for one:
    a cheaper graph node than ``TopK``)."""
    if k == 1:
        return d.min(dim=1, keepdim=True)
    return d.topk(min(k, d.shape[1]), dim=1, largest=False)


def torch_knn(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096,
              bank_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable twin of :meth:`NearestNeighbours.search`: distances ``(N, k)``
    (with gradients to ``queries``) and indices of each query's ``k`` nearest rows of
    ``bank``, nearest first. Works on ``queries``' device and dtype; the neighbours are
    chosen without gradient (:func:`chunked_nearest`: blocks of ``chunk`` queries by
    ``bank_rows`` bank rows, default :data:`BANK_CHUNK` or what :func:`bank_chunk` set, so
    no ``(N, M)`` matrix is allocated), the distances to them
    are recomputed exactly (no ``|x|^2 - 2xy + |y|^2`` cancellation in what carries the
    gradient). While a graph is traced or exported the queries are one block (their number
    follows the graph's batch size); the bank is still walked in ``bank_rows`` blocks.
    """
    block = _BANK_CHUNK.get() if bank_rows is None else bank_rows
    rows = as_rows(bank).to(queries.device, queries.dtype)
    if k > rows.shape[0]:
        raise ConfigError(f"top_k={k} exceeds the bank size {rows.shape[0]}")
    q = queries.reshape(-1, rows.shape[1])
    if _exporting():
        idx = chunked_nearest(q, rows, k, block)
        dist = torch.linalg.vector_norm(q[:, None, :] - rows[idx], dim=-1)
    else:
        dists, idxs = [], []
        for start in range(0, q.shape[0], chunk):
            part = q[start:start + chunk]
            near_idx = chunked_nearest(part, rows, k, block)
            dists.append(torch.linalg.vector_norm(part[:, None, :] - rows[near_idx], dim=-1))
            idxs.append(near_idx)
        if not dists:
            return q.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=q.device)
        dist, idx = torch.cat(dists), torch.cat(idxs)
    order = dist.detach().argsort(dim=1)  # exact distances may reorder near-ties
    return dist.gather(1, order), idx.gather(1, order)
