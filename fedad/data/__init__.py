"""Datasets: sample records, layout readers (MTD, MVTec, VisA, mixed) and the torch dataset."""

from __future__ import annotations

from fedad.data.dataset import AnomalyDataset, collate_samples
from fedad.data.factory import build_dataset
from fedad.data.sample import ANOMALOUS, NORMAL, Sample, SampleRecord

__all__ = [
    "ANOMALOUS",
    "NORMAL",
    "AnomalyDataset",
    "Sample",
    "SampleRecord",
    "build_dataset",
    "collate_samples",
]
