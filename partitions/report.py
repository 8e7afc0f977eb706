"""Show how a partition splits product types over clients: a text table and a bar plot.

The plot is drawn with matplotlib directly (an Agg canvas, no pyplot global state) rather
than with ``flwr_datasets.visualization.plot_label_distributions``: that function needs a
partitioner object (we hand around plain index lists) and sends a telemetry event over the
network unless ``FLWR_TELEMETRY_ENABLED=0`` was set before flwr_datasets was imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def count_matrix(
    product_types: Sequence[str], parts: Sequence[Sequence[int]]
) -> tuple[list[str], list[list[int]]]:
    """Samples per client per product type.

    Args:
        product_types: product type of every training sample.
        parts: per client, indices into ``product_types``.

    Returns:
        ``(types, counts)``: the sorted product types and ``counts[client][type_index]``.
    """
    types = sorted({str(t) for t in product_types})
    col = {t: j for j, t in enumerate(types)}
    n = len(product_types)
    counts = []
    for c, part in enumerate(parts):
        row = [0] * len(types)
        for i in part:
            if not 0 <= int(i) < n:
                raise IndexError(f"client {c}: index {i} outside 0..{n - 1}")
            row[col[str(product_types[int(i)])]] += 1
        counts.append(row)
    return types, counts


def counts_table(product_types: Sequence[str], parts: Sequence[Sequence[int]]) -> str:
    """A text table: one row per client, one column per product type, plus totals.

    Args:
        product_types: product type of every training sample.
        parts: per client, indices into ``product_types``.

    Returns:
        The table (no trailing newline); the last row and column hold totals.
    """
    types, counts = count_matrix(product_types, parts)
    header = ["client", *types, "total"]
    rows = [[f"client {c}", *map(str, row), str(sum(row))] for c, row in enumerate(counts)]
    col_totals = [sum(row[j] for row in counts) for j in range(len(types))]
    rows.append(["total", *map(str, col_totals), str(sum(col_totals))])
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])])


def plot_counts(
    product_types: Sequence[str],
    parts: Sequence[Sequence[int]],
    path: str | os.PathLike[str],
    title: str = "Samples per client by product type",
) -> Path:
    """Save a stacked bar plot of each client's composition by product type (paper Fig. 5).

    Args:
        product_types: product type of every training sample.
        parts: per client, indices into ``product_types``.
        path: output image file (format from the suffix, e.g. ``.png``); parent dirs are made.
        title: plot title.

    Returns:
        The path written.
    """
    types, counts = count_matrix(product_types, parts)
    num_clients = len(counts)
    fig = Figure(figsize=(max(4.0, 0.6 * num_clients + 3.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab20"]
    x = list(range(num_clients))
    bottom = [0] * num_clients
    for j, name in enumerate(types):
        heights = [row[j] for row in counts]
        ax.bar(x, heights, bottom=bottom, label=name, color=cmap(j % 20), width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(x, [str(c) for c in x])
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(title="product type", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
