"""The parts of a self-contained HTML page (:mod:`fedad.evaluation.html_report`): inline
CSS, tables, sections and images inlined as base64 PNG data URIs. No external URL, no
script: the page opens offline. Every text goes through :func:`html.escape`."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;
max-width:1200px;padding:0 1em;color:#1b1f24;background:#fff;line-height:1.4}
h1{font-size:1.45em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;
border-bottom:1px solid #d0d7de;padding-bottom:.2em}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta td:first-child{font-weight:600;background:#f6f8fa}
.na{color:#8c959f}.note{color:#57606a;font-size:.9em}
figure{display:inline-block;margin:.3em .4em .3em 0;vertical-align:top}
figcaption{font-size:.78em;color:#57606a;max-width:260px;word-break:break-all}
img{max-width:100%;height:auto}img.thumb{border:1px solid #d0d7de}
figure.panel{width:132px}
nav a{margin-right:.9em}footer{margin-top:2em;font-size:.8em;color:#57606a}
"""


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def number(value: float | None, digits: int = 4) -> str:
    """A number as table text; ``None`` or NaN is ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="na">n/a</span>'
    return esc(f"{value:.{digits}f}")


def mean_std(stat: dict | None) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` dict; missing or NaN is ``n/a``."""
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return '<span class="na">n/a</span>'
    return esc(f"{stat['mean']:.4f} ± {stat['std']:.4f}")


def table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1,
          cls: str = "") -> str:
    """A table (no header row when every ``head`` is empty); ``head`` is escaped, ``rows``
    are HTML already (escape with :func:`esc`, :func:`number`); columns from
    ``numeric_from`` on are right-aligned."""
    attr = f' class="{esc(cls)}"' if cls else ""
    thead = ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>"
             if any(head) else "")
    out = [f"<table{attr}>{thead}<tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>")
    return "".join(out) + "</tbody></table>"


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str, width: int | None = None, cls: str = "") -> str:
    """An ``<img>`` with ``png`` inlined."""
    w = f' width="{int(width)}"' if width else ""
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}"{w}{c}>'


def figure(body: str, caption: str, cls: str = "") -> str:
    """``body`` (HTML) with an escaped caption."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<figure{c}>{body}<figcaption>{esc(caption)}</figcaption></figure>"


def section(anchor: str, title: str, body: str) -> str:
    """``<section id=anchor>`` with an escaped heading."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def na(text: str) -> str:
    """A paragraph saying why something is not shown."""
    return f'<p class="na">n/a: {esc(text)}</p>'


def page(title: str, body: str, sections: Sequence[tuple[str, str]] = ()) -> str:
    """The whole document: ``title`` (escaped) as ``<title>`` and ``<h1>``, a navigation
    bar over ``sections`` (``(anchor, name)``), ``body`` (HTML)."""
    nav = ("<nav>" + "".join(f'<a href="#{esc(a)}">{esc(n)}</a>' for a, n in sections)
           + "</nav>") if sections else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1>{nav}{body}"
            "<footer>Written by fedad (self-contained: no external resources).</footer>"
            "</body></html>\n")


def png_of_array(rgb: np.ndarray, size: int | None = None, nearest: bool = False) -> bytes:
    """An ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG bytes, scaled to ``size`` px on
    its longer side (``nearest``: no smoothing, for masks)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if size and max(img.size) != size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
