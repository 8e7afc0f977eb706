"""Unreadable files found while a dataset is read, one by one, so a run reports every bad
image or mask at once (``dataset.on_bad``: refuse the data with the list, or skip them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from torch.utils.data import Dataset

from fedad.config.schema import DataConfig
from fedad.data.dataset import AnomalyDataset, collate_samples
from fedad.errors import BadFilesError, ConfigError, DataError

ON_BAD = ("refuse", "skip")
LISTED = 20  # files named in an error message (all of them are in ``files``)


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


class Guarded(Dataset):
    """``dataset[i]``, or a :class:`BadFile` when its image or mask cannot be read."""

    def __init__(self, dataset: AnomalyDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except DataError as exc:
            return BadFile(self.dataset.records[index].path, str(exc))


def collate_guarded(batch: Sequence) -> tuple[dict | None, list[BadFile]]:
    """The readable samples of ``batch`` collated (``None`` if none) and the bad ones."""
    good = [b for b in batch if not isinstance(b, BadFile)]
    return (collate_samples(good) if good else None,
            [b for b in batch if isinstance(b, BadFile)])


def check_on_bad(on_bad: str) -> str:
    if on_bad not in ON_BAD:
        raise ConfigError(f"dataset.on_bad must be one of {', '.join(ON_BAD)}, got {on_bad!r}")
    return on_bad


def screen(dataset: Dataset) -> list[BadFile]:
    """Every sample of ``dataset`` read once (image and mask, decoded and resized as the
    sites will), the ones that cannot be read listed."""
    guarded = Guarded(dataset)
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:  # PIL decodes off the GIL
        return [got for got in pool.map(guarded.__getitem__, range(len(guarded)))
                if isinstance(got, BadFile)]


def screen_local(cfg: DataConfig) -> None:
    """The sites' start-up data check, run where the data is local to the launcher (a
    simulation) before anything starts, so a bad file fails the run in seconds rather
    than after Flower's launch; nothing to do with ``dataset.on_bad=skip`` (the sites
    leave the files out and record them).

    Raises:
        BadFilesError: every unreadable image or mask of the training and test splits.
    """
    if check_on_bad(cfg.on_bad) == "skip":
        return
    from fedad.data.factory import build_dataset  # the factory imports this module's users

    bad = [b for split in ("train", "test") for b in screen(build_dataset(cfg, split))]
    if bad:
        raise refuse(bad, f"start-up data check of {cfg.root or cfg.name}")


def refuse(bad: Sequence[BadFile], desc: str) -> BadFilesError:
    """The error that lists ``bad`` (``dataset.on_bad=refuse``)."""
    files = [str(b) for b in bad]
    more = f"\n  ... and {len(files) - LISTED} more" if len(files) > LISTED else ""
    return BadFilesError(
        f"{desc}: {len(files)} unreadable file(s); fix or remove them, or set "
        "dataset.on_bad=skip to leave them out:\n  " + "\n  ".join(files[:LISTED]) + more,
        files)
