"""Frozen features computed once per image and reused every epoch and round.

The backbone is frozen, so an image's features depend only on its pixels and the extractor.
Each image is keyed by the SHA-256 of its preprocessed input tensor plus the extractor's
signature; features live in process memory (``memory``), in ``.pt`` files under a cache
folder (``disk``: survives processes, as needed on real Flower SuperNodes) or nowhere
(``none``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fedad.config.schema import RunConfig
from fedad.data.dataset import AnomalyDataset
from fedad.data.screen import Guarded, check_on_bad, collate_guarded, refuse
from fedad.errors import ConfigError
from fedad.features.extractor import FeatureExtractor, extractor_signature
from fedad.features.stream import FeatureFile, FeatureWriter
from fedad.progress import progress

log = logging.getLogger("fedad")
_MEMORY: dict[str, torch.Tensor] = {}


@dataclass
class FeatureSet:
    """Features of a dataset, with what scoring and metrics need.

    Attributes:
        features: ``(N, C, H, W)``, float32 or float16, on the CPU; a
            :class:`~fedad.features.stream.FeatureFile` for a streamed set
            (``backbone.stream``: a site's training features, read chunk by chunk).
        labels: ``(N,)`` 0 normal / 1 anomalous.
        masks: ``(N, S, S)`` uint8 ground truth at the input size, or ``None``.
        paths: source path per image.
        product_types: product type per image.
        skipped: unreadable files left out (``dataset.on_bad=skip``), ``"<path>: <why>"``.
    """

    features: torch.Tensor | FeatureFile
    labels: torch.Tensor
    masks: torch.Tensor | None
    paths: list[str]
    product_types: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the features (on disk for a streamed set)."""
        if isinstance(self.features, FeatureFile):
            return self.features.nbytes
        return self.features.numel() * self.features.element_size()


def clear_memory_cache() -> None:
    """Forget every feature kept in process memory."""
    _MEMORY.clear()


def _key(image: torch.Tensor, signature: str) -> str:
    h = hashlib.sha256(signature.encode())
    h.update(image.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def extract_features(
    extractor: FeatureExtractor,
    dataset: AnomalyDataset,
    signature: str,
    device: torch.device,
    batch_size: int = 16,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    half: bool = False,
    num_workers: int = 0,
    desc: str = "features",
    on_bad: str = "refuse",
    stream: bool = False,
) -> FeatureSet:
    """Compute (or fetch from the cache) the fused features of every image in ``dataset``.

    Every image and mask is read; the unreadable ones are collected and, after the pass,
    either raised together (``on_bad="refuse"``: :class:`~fedad.errors.BadFilesError`
    listing each file and why) or left out and listed in ``FeatureSet.skipped``.

    ``stream``: the features go to a :class:`~fedad.features.stream.FeatureFile` (under
    ``cache_dir`` when given) batch by batch instead of into memory; the per-image disk cache
    is still read and written, the memory cache is not; no masks are kept (a streamed set is
    a site's normal training images).
    """
    check_on_bad(on_bad)
    if cache not in ("memory", "disk", "none"):
        raise ConfigError(f"backbone.cache must be memory, disk or none, got {cache!r}")
    folder = None
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("backbone.cache=disk needs backbone.cache_dir")
        folder = Path(cache_dir).expanduser() / signature
        folder.mkdir(parents=True, exist_ok=True)
    extractor = extractor.to(device)
    dtype = torch.float16 if half else torch.float32
    loader = DataLoader(Guarded(dataset), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_guarded)
    writer = FeatureWriter(cache_dir, dtype, desc) if stream else None
    memory = cache == "memory" and writer is None
    feats, labels, masks, paths, types, all_keys = [], [], [], [], [], []
    bad_files = []
    hits = 0
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    for batch, bad in progress(loader, n_batches, desc):
        bad_files.extend(bad)
        if batch is None:
            continue
        images = batch["image"]
        keys = [_key(img, signature) for img in images]
        all_keys.extend(keys)
        out: list[torch.Tensor | None] = [None] * len(keys)
        for i, k in enumerate(keys):
            if memory and k in _MEMORY:
                out[i] = _MEMORY[k]
            elif folder is not None and (folder / f"{k}.pt").is_file():
                try:
                    out[i] = torch.load(folder / f"{k}.pt", map_location="cpu", weights_only=True)
                except Exception as exc:  # a torn file from a killed process: recompute
                    log.warning("feature cache: unreadable %s (%s), recomputing",
                                folder / f"{k}.pt", exc)
        todo = [i for i, o in enumerate(out) if o is None]
        hits += len(keys) - len(todo)
        if todo:
            computed = extractor(images[todo].to(device)).to("cpu", dtype)
            for j, i in enumerate(todo):
                f = computed[j].clone()
                out[i] = f
                if memory:
                    _MEMORY[keys[i]] = f
                elif folder is not None:
                    tmp = folder / f"{keys[i]}.tmp"
                    torch.save(f, tmp)
                    tmp.replace(folder / f"{keys[i]}.pt")
        if writer is not None:
            writer.append(torch.stack(out))
        else:
            feats.extend(o.to(dtype) for o in out)
        labels.append(batch["label"])
        if batch["mask"] is not None and writer is None:
            masks.append(batch["mask"][:, 0].to(torch.uint8))
        paths.extend(batch["path"])
        types.extend(batch["product_type"])
    if bad_files and on_bad == "refuse":
        if writer is not None:
            writer.abandon()
        raise refuse(bad_files, desc)
    if bad_files:
        log.warning("%s: %d unreadable file(s) skipped (dataset.on_bad=skip): %s", desc,
                    len(bad_files), "; ".join(str(b) for b in bad_files[:5]))
    if not feats and not (writer is not None and len(writer)):
        if writer is not None:
            writer.abandon()
        raise ConfigError(f"{desc}: the dataset is empty"
                          + (" (every file was unreadable)" if bad_files else ""))
    if hits:
        log.info("%s: %d/%d images from the %s cache", desc, hits, len(all_keys), cache)
    if writer is not None:
        features: torch.Tensor | FeatureFile = writer.finish()
        log.info("%s: %d images streamed to %s (%.1f MB on disk)", desc, len(features),
                 features.path, features.nbytes / 1e6)
    else:
        features = torch.stack(feats)
        del feats
    if memory:  # keep one copy: cache entries become views of the stacked tensor
        for i, k in enumerate(all_keys):
            _MEMORY[k] = features[i]
    return FeatureSet(
        features=features,
        labels=torch.cat(labels),
        masks=torch.cat(masks) if masks and sum(len(m) for m in masks) == len(paths) else None,
        paths=paths,
        product_types=types,
        skipped=[str(b) for b in bad_files],
    )


def dataset_features(cfg: RunConfig, extractor: FeatureExtractor, info: dict,
                     dataset: AnomalyDataset, device: torch.device, desc: str,
                     stream: bool = False) -> FeatureSet:
    """Features of ``dataset`` with the cache settings of ``cfg.backbone``, normalised for
    the backbone described by ``info``; ``stream``: to a file (:func:`extract_features`)."""
    dataset.set_normalisation(info["mean"], info["std"])
    return extract_features(
        extractor, dataset, extractor_signature(info, extractor.state_dict()), device,
        batch_size=cfg.train.batch_size, cache=cfg.backbone.cache,
        cache_dir=cfg.backbone.cache_dir, half=cfg.backbone.half,
        num_workers=cfg.num_workers, desc=desc, on_bad=cfg.dataset.on_bad, stream=stream,
    )
