"""Exact nearest-neighbour search over a fixed set of rows.

Two paths with the same answers (within float32 rounding):

* :class:`NearestNeighbours`: faiss ``IndexFlatL2`` (a GPU index when faiss-gpu is importable
  and CUDA is present), no gradient: the fast path every detector scores with;
* :func:`torch_knn`: the same search in torch, chunked so the full distance matrix is never
  allocated, with gradients flowing to the queries: the differentiable path (a refinement
  that optimises an image against a detector's score needs it).
"""

from __future__ import annotations

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


def torch_knn(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiable twin of :meth:`NearestNeighbours.search`: distances ``(N, k)``
    (with gradients to ``queries``) and indices of each query's ``k`` nearest rows of
    ``bank``, nearest first. Works on ``queries``' device and dtype; the neighbours are
    chosen without gradient, the distances to them are recomputed exactly (no
    ``|x|^2 - 2xy + |y|^2`` cancellation in what carries the gradient).
    """
    rows = as_rows(bank).to(queries.device, queries.dtype)
    if k > rows.shape[0]:
        raise ConfigError(f"top_k={k} exceeds the bank size {rows.shape[0]}")
    q = queries.reshape(-1, rows.shape[1])
    dists, idxs = [], []
    sq_rows = (rows * rows).sum(dim=1)
    for start in range(0, q.shape[0], chunk):
        part = q[start:start + chunk]
        with torch.no_grad():
            d2 = (part * part).sum(dim=1, keepdim=True) - 2 * part @ rows.T + sq_rows
            idx = d2.topk(k, dim=1, largest=False).indices
        near = rows[idx]  # (n, k, C)
        dists.append(torch.linalg.vector_norm(part[:, None, :] - near, dim=-1))
        idxs.append(idx)
    if not dists:
        return q.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=q.device)
    dist, idx = torch.cat(dists), torch.cat(idxs)
    order = dist.detach().argsort(dim=1)  # exact distances may reorder near-ties
    return dist.gather(1, order), idx.gather(1, order)
