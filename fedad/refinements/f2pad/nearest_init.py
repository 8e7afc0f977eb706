"""``f2pad.init=nearest``: Algorithm 1's initial normal image ``n0`` with the base mask's
pixels copied from the site's nearest normal training image, ranked by a global descriptor
of the frozen backbone (the mean of the fused features over positions). It stands in for
the paper's pretrained MAE, which cannot be had offline (``shared/docs/seed-methods.md``,
F2PAD's substitute 2): on aligned industrial images the nearest normal image holds what the
masked pixels would show without the defect.

The candidates are a seeded sample of ``f2pad.nearest_images`` of the site's training
images (all of them with 0). Their paths and descriptors stay in the site's folder
(:func:`save_candidates`) so ``fedad-predict`` refines new images the same way, reading the
candidates from the site's own files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fedad.data.dataset import AnomalyDataset
from fedad.data.io import FileSource
from fedad.data.sample import SampleRecord
from fedad.errors import ConfigError, DataError
from fedad.features.extractor import FeatureExtractor

CANDIDATES_FILE = "f2pad-nearest.npz"


@torch.no_grad()
def descriptors(images: torch.Tensor, extractor: FeatureExtractor,
                batch_size: int = 16) -> torch.Tensor:
    """``(N, C)``: the mean over positions of each image's fused frozen features."""
    out = [extractor.fuse(images[a:a + batch_size].float()).mean(dim=(2, 3))
           for a in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


class NearestNormal:
    """``x`` ``(3, S, S)`` (backbone-normalised) -> the candidate whose descriptor is
    nearest to ``x``'s (Euclidean), backbone-normalised. ``image(i)`` gives candidate
    ``i``: read on demand, so only the descriptors are held."""

    def __init__(self, keys: torch.Tensor, image: Callable[[int], torch.Tensor],
                 paths: Sequence[str],
                 extractor: FeatureExtractor) -> None:
        if keys.ndim != 2 or keys.shape[0] < 1:
            raise ConfigError("f2pad.init=nearest: the site has no training image to copy "
                              "normal pixels from")
        self.keys, self.image, self.paths = keys.float(), image, list(paths)
        self.extractor = extractor
        self.last: int | None = None  # the candidate the last call chose

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = descriptors(x[None], self.extractor)[0]
        self.last = int(torch.cdist(key[None], self.keys)[0].argmin())
        return self.image(self.last).to(x)


def from_dataset(train: AnomalyDataset, extractor: FeatureExtractor, limit: int,
                 seed: int) -> NearestNormal:
    """The candidates of a site's training ``train`` (a seeded sample of ``limit``; all
    with 0), their descriptors computed in batches."""
    n = len(train)
    idx = (list(range(n)) if not limit or limit >= n
           else sorted(np.random.default_rng(seed).permutation(n)[:limit].tolist()))
    keys = [descriptors(torch.stack([train[i].image for i in idx[a:a + 16]]), extractor)
            for a in range(0, len(idx), 16)]
    return NearestNormal(torch.cat(keys) if keys else torch.zeros(0, 0),
                         lambda j: train[idx[j]].image, [train.records[i].path for i in idx],
                         extractor)


def save_candidates(folder: str | Path, nearest: NearestNormal) -> Path:
    """The candidates' paths and descriptors in the site's folder (they stay at the site)."""
    path = Path(folder) / CANDIDATES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=nearest.keys.numpy(), paths=np.array(nearest.paths))
    return path


def load_candidates(folder: str | Path, extractor: FeatureExtractor, image_size: int,
                    mean: Sequence[float], std: Sequence[float]) -> NearestNormal:
    """What :func:`save_candidates` wrote, each candidate read from its file when chosen.

    Raises:
        ConfigError: the file is missing (the run was not ``f2pad.init=nearest``).
        DataError: a chosen candidate's file cannot be read at this site, naming it.
    """
    path = Path(folder) / CANDIDATES_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; f2pad.init=nearest needs the site's candidate "
                          "normal images, which a run with refine=f2pad f2pad.init=nearest "
                          "leaves in the site's folder")
    with np.load(path) as z:
        keys, paths = torch.from_numpy(z["keys"]), [str(p) for p in z["paths"]]
    records = [SampleRecord(path=p, label=0, product_type="site") for p in paths]
    files = AnomalyDataset(records, FileSource(), image_size, mean, std, has_masks=False)

    def image(j: int) -> torch.Tensor:
        try:
            return files[j].image
        except DataError as exc:
            raise DataError(f"f2pad.init=nearest: candidate normal image {paths[j]} cannot "
                            f"be read at this site ({exc})") from exc

    return NearestNormal(keys, image, paths, extractor)
