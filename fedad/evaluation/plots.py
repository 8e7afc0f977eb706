"""Figures of a run: metrics per round, ROC curves and anomaly-map examples (matplotlib,
Agg canvas)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """``fig`` as PNG bytes (e.g. to inline in an HTML page)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def plot_metric_rounds(series: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                       title: str = "") -> Path:
    """One panel per metric; per line (e.g. a method) ``rounds``, ``mean`` and optional
    ``std`` lists. ``series = {metric: {"rounds": [...], "mean": [...], "std": [...]}}`` or
    ``{metric: {line_name: {...}}}``."""
    return _save(metric_rounds_figure(series, title), path)


def metric_rounds_figure(series: Mapping[str, Mapping[str, Sequence[float]]],
                         title: str = "") -> Figure:
    """The figure of :func:`plot_metric_rounds`."""
    fig = Figure(figsize=(4.2 * max(1, len(series)), 3.4))
    axes = fig.subplots(1, max(1, len(series)), squeeze=False)[0]
    for ax, (metric, lines) in zip(axes, series.items(), strict=False):
        if "rounds" in lines:
            lines = {"": lines}
        for name, line in lines.items():
            r = np.asarray(line["rounds"])
            m = np.asarray(line["mean"], dtype=float)
            ax.plot(r, m, marker="o", ms=3, label=name or None)
            if line.get("std") is not None and len(line["std"]) == len(m):
                s = np.asarray(line["std"], dtype=float)
                ax.fill_between(r, m - s, m + s, alpha=0.2)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if any(lines):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]],
               title: str = "") -> Figure:
    """ROC curves, one line per key: ``(fpr, tpr, auroc)``; the chance diagonal dashed."""
    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.subplots()
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_lines(panels: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
               path: str | Path, xlabel: str, ylabel: str, title: str = "",
               logx: bool = False) -> Path:
    """One panel per key of ``panels``; per line ``x``, ``mean`` and optional ``std``
    (a band). An empty ``panels`` gives a figure that says there is nothing to show."""
    n = max(1, len(panels))
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.0 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel, lines) in zip(axes, panels.items(), strict=False):
        for name, line in lines.items():
            x = np.asarray(line["x"], dtype=float)
            m = np.asarray(line["mean"], dtype=float)
            ax.plot(x, m, marker="o", ms=3, label=name)
            if line.get("std") is not None and len(line["std"]) == len(m):
                s = np.asarray(line["std"], dtype=float)
                ax.fill_between(x, m - s, m + s, alpha=0.2)
        if logx:
            ax.set_xscale("log")
        ax.set_title(panel, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no completed runs", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_bars(values: Mapping[str, float], path: str | Path, ylabel: str,
              title: str = "") -> Path:
    """One bar per key (e.g. MB exchanged per round per method)."""
    fig = Figure(figsize=(1.2 * max(3, len(values)) + 1.5, 3.4))
    ax = fig.subplots()
    names = list(values)
    ax.bar(range(len(names)), [values[k] for k in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_examples(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                  maps: Sequence[np.ndarray], titles: Sequence[str], path: str | Path) -> Path:
    """Rows of image, ground truth, heatmap. Each heatmap is min-max scaled over the shown
    examples together, for display only (metrics never see rescaled scores)."""
    n = len(images)
    lo = float(min(m.min() for m in maps)) if n else 0.0
    hi = float(max(m.max() for m in maps)) if n else 1.0
    fig = Figure(figsize=(7.5, 2.5 * max(n, 1)))
    axes = fig.subplots(max(n, 1), 3, squeeze=False)
    for row, (img, mask, amap, title) in enumerate(zip(images, masks, maps, titles, strict=True)):
        axes[row, 0].imshow(img)
        axes[row, 0].set_title(title, fontsize=7)
        axes[row, 1].imshow(mask if mask is not None else np.zeros(img.shape[:2]), cmap="gray",
                            vmin=0, vmax=1)
        axes[row, 1].set_title("ground truth", fontsize=7)
        axes[row, 2].imshow(img)
        axes[row, 2].imshow((amap - lo) / max(hi - lo, 1e-12), cmap="jet", alpha=0.5,
                            vmin=0, vmax=1)
        axes[row, 2].set_title("anomaly map", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    return _save(fig, path)


def plot_heatmap(image: np.ndarray, amap: np.ndarray, vmax: float, title: str,
                 path: str | Path) -> Path:
    """The image and its anomaly map side by side. The colour scale is fixed
    (``0..vmax``, e.g. twice the site's threshold) so maps compare across images; scores
    themselves are never rescaled."""
    fig = Figure(figsize=(6, 3.2))
    axes = fig.subplots(1, 2)
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=7)
    axes[1].imshow(image)
    shown = axes[1].imshow(amap, cmap="jet", alpha=0.5, vmin=0.0, vmax=max(vmax, 1e-12))
    axes[1].set_title("anomaly map", fontsize=7)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)
