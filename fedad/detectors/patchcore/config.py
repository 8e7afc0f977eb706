"""PatchCore's config section (``patchcore``), read into
:class:`fedad.config.schema.RunConfig` (a plain dataclass: layer 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedad.config.fields import choice


@dataclass
class PatchCoreConfig:
    """PatchCore (Roth et al. 2022): locally aware patch features, greedy coreset, k-NN.

    Federated: each client uploads a greedy coreset of ``upload_ratio`` of its patches; the
    server reduces the union to ``global_ratio`` of all clients' patches (``merge``:
    ``coreset`` = greedy coreset of the union, ``kmeans`` = faiss K-means centres,
    ``concat`` = the union as it is). Greedy k-center is prefix-consistent, so with one
    client the result is exactly the centralized ``global_ratio`` coreset.
    """

    strides: list[int] = field(default_factory=lambda: [8, 16])  # backbone levels used
    upload_ratio: float = 0.1  # fraction of a client's patches it uploads (its coreset)
    global_ratio: float = 0.01  # global bank size as a fraction of all clients' patches
    projection_dim: int = 128  # random projection used only to select the coreset
    merge: str = choice("coreset", "kmeans", "concat")
    reweight: bool = False  # PatchCore's Eq. 7 re-weighting of the nearest distance
    reweight_k: int = 9  # neighbours of the nearest bank feature used by the re-weighting
    max_upload_rows: int = 2_000_000  # bound the server enforces on one upload
    avg_pool: bool = True  # locally aware patches: each level averaged over 3x3 (Sec. 3.1)
