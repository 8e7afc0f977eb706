"""Anomaly-map examples drawn by a client from its own view of the test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedad.config.schema import RunConfig
from fedad.data.factory import build_dataset
from fedad.detectors.base import Scores
from fedad.evaluation.plots import plot_examples
from fedad.federation.site_data import ClientData


def save_examples(cfg: RunConfig, data: ClientData, scores: Scores, out: str, n: int) -> None:
    """Plot ``n`` anomalous test images (evenly spread over the test set) with ground truth
    and anomaly map to ``<out>/examples-client<id>.png``."""
    if not out:
        return
    anomalous = np.flatnonzero(data.test.labels.numpy() == 1)
    if anomalous.size == 0:
        return
    pick = anomalous[np.linspace(0, anomalous.size - 1, min(n, anomalous.size)).astype(int)]
    dataset = build_dataset(cfg.dataset, "test")
    size = cfg.dataset.scored_size()
    images, masks, maps, titles = [], [], [], []
    for i in pick:
        sample = dataset[int(i)]
        img = sample.image * dataset.std + dataset.mean
        images.append(img.clamp(0, 1).permute(1, 2, 0).numpy())
        masks.append(None if sample.mask is None else sample.mask[0].numpy())
        maps.append(scores.maps[int(i)].numpy().reshape(size, size))
        where = "/".join(Path(data.test.paths[int(i)]).parts[-2:])
        titles.append(f"{data.test.product_types[int(i)]}: {where}, score "
                      f"{float(scores.image[int(i)]):.3f}")
    path = Path(out) / f"examples-client{data.partition_id}.png"
    plot_examples(images, masks, maps, titles, path)
