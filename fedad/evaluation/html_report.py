"""``report.html``: one self-contained page (inline CSS, images as base64 PNG data URIs,
no script, no external URL) for a run folder or a sweep folder.

A run's page holds its headline (detector, exchange, dataset, clients, rounds), the final
metrics (I-AUROC, P-AUROC, PRO: mean ± std over clients), the metrics per round, each
client's final results, the replies left out of aggregation and why, image-level ROC
curves (per client and pooled) and, per client, its worst and best cases (image, ground
truth, anomaly map, thresholded mask). Everything is read from the run folder:
``config.json``, ``rounds.json`` and the sites' ``site-<id>/scores.npz``
(:mod:`fedad.evaluation.cases`); what is missing (no masks, no per-image scores) is shown
as n/a. A sweep's page holds the table and the figures of
:func:`fedad.evaluation.sweep_report.make_report`.

``fedad-sim`` writes ``<run dir>/report.html`` at the end of every run
(:func:`report_after_run`); ``fedad-report DIR`` writes it for a run or a sweep folder
(:func:`write_report`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from fedad.errors import FedadError
from fedad.evaluation.cases import Case, SiteScores, load_scores
from fedad.evaluation.html_page import (
    esc,
    figure,
    image,
    mean_std,
    na,
    number,
    page,
    png_of_array,
    section,
    table,
)
from fedad.evaluation.report import METRICS, final_metrics, metric_series
from fedad.evaluation.run_status import read_status

log = logging.getLogger("fedad")
REPORT = "report.html"
THUMB = 128  # px, the cases' panels
DPI = 80  # the figures'
NAMES = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "pro": "PRO"}
RUN_SECTIONS = (("final", "Final metrics"), ("rounds", "Per round"), ("clients", "Per client"),
                ("left-out", "Left out of aggregation"), ("roc", "ROC curves"),
                ("cases", "Worst and best cases"))
SWEEP_SECTIONS = (("table", "Table"), ("figures", "Figures"), ("runs", "Runs"))
SWEEP_FIGURES = {"rounds": "rounds.png: I-AUROC per round", "epochs": "epochs.png: I-AUROC per "
                 "local epochs", "alpha": "alpha.png: I-AUROC per alpha",
                 "bytes": "bytes.png: MB per round"}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FedadError(f"{path}: unreadable ({exc})") from exc


# -- a run --------------------------------------------------------------------------------


def headline(cfg: dict, result: dict) -> tuple[str, str]:
    """The page title and the table of what the run was."""
    history = result.get("rounds", [])
    rounds = max((r["round"] for r in history), default=0)
    ds, part = cfg.get("dataset", {}), cfg.get("partition", {})
    name = result.get("label") or cfg.get("detector", "?")
    title = (f"{name} run: {ds.get('name', '?')}, {cfg.get('num_clients', '?')} clients, "
             f"{rounds} rounds")
    evaluated = [r["round"] for r in history if r.get("evaluate")]
    rows = [("detector", cfg.get("detector", "?")), ("exchange", cfg.get("exchange", "?")),
            ("dataset", f"{ds.get('name', '?')} at {ds.get('image_size', '?')} px"),
            ("clients", cfg.get("num_clients", "?")),
            ("rounds", f"{rounds} (evaluated after {', '.join(map(str, evaluated)) or 'none'})"),
            ("partition", f"{part.get('method', '?')} (alpha {part.get('alpha', '?')})"),
            ("backbone", cfg.get("backbone", {}).get("name", "?")),
            ("seed", cfg.get("train", {}).get("seed", "?"))]
    return title, table(("", ""), ((esc(k), esc(v)) for k, v in rows), numeric_from=9,
                        cls="meta")


def final_section(result: dict) -> str:
    final = final_metrics(result.get("rounds", []))
    if not final:
        return section("final", "Final metrics", na("no evaluated round"))
    clients = len(final.get("per_client", {}))
    body = table(("metric", "mean ± std over clients"),
                 ((esc(NAMES[k]), mean_std(final.get(k))) for k in METRICS))
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in result.get("notes", []))
    return section("final", "Final metrics",
                   f'<p class="note">The last evaluated round, {clients} client(s); n/a: the '
                   "data has no pixel masks (pixel metrics) or no round was evaluated.</p>"
                   + body + notes)


def rounds_section(result: dict) -> str:
    from fedad.evaluation.plots import metric_rounds_figure, png_bytes

    history = result.get("rounds", [])
    series = metric_series(history)
    fig = (image(png_bytes(metric_rounds_figure(
        {NAMES[k]: v for k, v in series.items()}, "mean ± std over clients"), DPI),
        "metrics per round") if series else na("no evaluated round"))
    rows = []
    for rec in history:
        ev = rec.get("evaluate") or {}
        rows.append([esc(rec["round"]), esc(rec.get("train", {}).get("clients", "?")),
                     *(mean_std(ev.get(k)) for k in METRICS),
                     number(rec.get("bytes", {}).get("received_per_client", float("nan"))
                            / 1e6, 3),
                     number(rec.get("seconds", {}).get("round"), 1)])
    return section("rounds", "Per round", fig + table(
        ("round", "clients", *(NAMES[k] for k in METRICS), "MB up / client", "s"), rows))


def _rate(flags: np.ndarray) -> str:
    return number(float(flags.mean()) if flags.size else None, 3)


def clients_section(result: dict, sites: list[SiteScores]) -> str:
    final = final_metrics(result.get("rounds", [])).get("per_client", {})
    if not final:
        return section("clients", "Per client", na("no evaluated round"))
    by_site = {str(s.site): s for s in sites}
    rows = []
    for pid, vals in final.items():
        s = by_site.get(pid)
        thr = vals.get("threshold")
        normal = defective = np.zeros(0, bool)
        if s is not None and thr is not None:
            normal = s.scores[s.labels == 0] > thr
            defective = s.scores[s.labels == 1] > thr
        rows.append([esc(pid), *(number(vals.get(k)) for k in METRICS), number(thr),
                     _rate(normal), _rate(defective),
                     esc(len(s.scores)) if s is not None else number(None)])
    return section("clients", "Per client", (
        '<p class="note">Final round. The threshold is the site\'s own, calibrated on its '
        "held-out normal training images (never on test images); the rates are of its test "
        "images scoring above it.</p>") + table(
        ("client", *(NAMES[k] for k in METRICS), "threshold", "normal flagged",
         "defective flagged", "test images"), rows))


def left_out_section(result: dict) -> str:
    """The replies the server left out of aggregation (validation or robust aggregation):
    how many per client, and every reason (rounds.json ``rejected``)."""
    per_client = result.get("rejected_per_client") or {}
    reasons = result.get("rejected") or []
    if not per_client and not reasons:
        return section("left-out", "Left out of aggregation",
                       '<p class="note">Every reply counted: none was left out.</p>')
    counts = table(("client", "replies left out"),
                   ([esc(c), esc(n)] for c, n in sorted(per_client.items())))
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    return section("left-out", "Left out of aggregation", (
        '<p class="note">Replies the server did not merge: an upload that failed '
        "validation, a client that raised, or one robust aggregation dropped. The run "
        "went on with the others.</p>") + counts + f"<ul>{items}</ul>")


def roc_curves(sites: list[SiteScores]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Image-level ROC curves ``(fpr, tpr, auroc)`` (scikit-learn) of each client whose
    test set has both classes, and of all clients' scores pooled (more than one client)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    def curve(scores: np.ndarray, labels: np.ndarray):
        fpr, tpr, _ = roc_curve(labels, scores)
        return fpr, tpr, float(roc_auc_score(labels, scores))

    curves = {f"client {s.site}": curve(s.scores, s.labels) for s in sites
              if len(np.unique(s.labels)) == 2}
    if len(curves) > 1:
        curves["pooled"] = curve(np.concatenate([s.scores for s in sites]),
                                 np.concatenate([s.labels for s in sites]))
    return curves


NO_SCORES = ("no per-image scores in this run folder (the sites write site-<id>/scores.npz "
             "after the final round; a deployment's sites keep theirs on their own hosts)")


def roc_section(sites: list[SiteScores]) -> str:
    from fedad.evaluation.plots import png_bytes, roc_figure

    if not sites:
        return section("roc", "ROC curves", na(NO_SCORES))
    curves = roc_curves(sites)
    if not curves:
        return section("roc", "ROC curves", na("no client's test set has both normal and "
                                               "defective images"))
    return section("roc", "ROC curves (image level)", (
        '<p class="note">Each client scores the test images with its own model; "pooled" '
        "puts every client's scores together.</p>")
        + image(png_bytes(roc_figure(curves, "image-level ROC"), DPI), "ROC curves"))


def _panel(array: np.ndarray | None, caption: str, nearest: bool = False) -> str:
    """One ``THUMB``-px panel (``None``: n/a)."""
    body = ('<span class="na">n/a</span>' if array is None else
            image(png_of_array(array, THUMB, nearest), caption, THUMB, "thumb"))
    return figure(body, caption, "panel")


def case_panels(case: Case, pixel_threshold: float | None, lo: float, hi: float) -> str:
    """Image, ground truth, anomaly map (colour scale ``lo..hi``) and the map above the
    pixel threshold, as four figures."""
    from matplotlib import colormaps

    scaled = np.clip((case.amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = (colormaps["jet"](scaled)[..., :3] * 255).round().astype(np.uint8)
    mask = None if case.mask is None else (case.mask > 0).astype(np.uint8) * 255
    above = (None if pixel_threshold is None
             else (case.amap > pixel_threshold).astype(np.uint8) * 255)
    return "".join([
        _panel(case.image, "image"), _panel(mask, "ground truth", nearest=True),
        _panel(heat, f"anomaly map ({lo:.3g}..{hi:.3g})"),
        _panel(above, "map > pixel threshold" + ("" if pixel_threshold is None
                                                 else f" {pixel_threshold:.4g}"), nearest=True)])


def cases_section(sites: list[SiteScores]) -> str:
    if not sites:
        return section("cases", "Worst and best cases", na(NO_SCORES))
    parts = ['<p class="note">Per client: the highest-scored normal image (its worst false '
             "alarm), the lowest-scored defective image (its worst miss) and the "
             "highest-scored defective image (its best detection). The anomaly maps of a "
             "client share one colour scale; the pixel threshold is the calibration quantile "
             "of its held-out normal images' largest map values (no test label used; n/a: "
             "none held out). Ground truth n/a: the data has no pixel masks.</p>"]
    for s in sites:
        parts.append(f"<h3>client {esc(s.site)}</h3>")
        if not s.cases:
            parts.append(na("no case kept"))
            continue
        lo = float(min(c.amap.min() for c in s.cases))
        hi = float(max(c.amap.max() for c in s.cases))
        for c in s.cases:
            verdict = "" if s.image_threshold is None else (
                f", {'above' if c.score > s.image_threshold else 'not above'} the "
                f"threshold {s.image_threshold:.4f}")
            where = "/".join(Path(c.path).parts[-3:])
            parts.append(f"<p><b>{esc(c.name)}</b>: {esc(where)} "
                         f"({'defective' if c.label else 'normal'}), score {c.score:.4f}"
                         f"{esc(verdict)}</p><div>{case_panels(c, s.pixel_threshold, lo, hi)}"
                         "</div>")
    return section("cases", "Worst and best cases", "".join(parts))


def run_html(run_dir: str | Path) -> str:
    """The page of the run folder ``run_dir``.

    Raises:
        FedadError: ``config.json`` or ``rounds.json`` is missing or unreadable.
    """
    run_dir = Path(run_dir)
    cfg, result = _json(run_dir / "config.json"), _json(run_dir / "rounds.json")
    sites = load_scores(run_dir)
    title, meta = headline(cfg, result)
    body = (meta + final_section(result) + rounds_section(result)
            + clients_section(result, sites) + left_out_section(result) + roc_section(sites)
            + cases_section(sites))
    return page(title, body, RUN_SECTIONS)


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's page to ``out`` (default ``<run_dir>/report.html``)."""
    path = Path(out) if out else Path(run_dir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    text = run_html(run_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_after_run(run_dir: str | Path) -> Path | None:
    """:func:`write_run_report` at the end of a run: a failure is a warning (the run's
    other outputs are written already) and gives ``None``."""
    try:
        path = write_run_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - a report never fails the run
        log.warning("no report.html for %s (%s: %s)", run_dir, type(exc).__name__, exc)
        return None
    log.info("report: %s", path)
    return path


# -- a sweep ------------------------------------------------------------------------------


def _run_link(sweep: Path, folder: str, out: Path) -> str:
    """A relative link to a sweep run's own report.html, when it has one."""
    status = read_status(sweep / folder) or {}
    target = sweep / folder / str(status.get("run_dir")) / REPORT
    if not status.get("run_dir") or not target.is_file():
        return esc(folder)
    return f'<a href="{esc(os.path.relpath(target, out))}">{esc(folder)}</a>'


def sweep_html(sweep: str | Path, files: dict[str, Path]) -> str:
    """The page of a sweep from what :func:`~fedad.evaluation.sweep_report.make_report`
    wrote (``files``: its ``report.json`` and figures)."""
    from fedad.evaluation.sweep_report import _fmt, _short

    sweep = Path(sweep)
    out = files["json"].parent
    data = _json(files["json"])
    keys, rows, runs = data["keys"], data["rows"], data["runs"]
    done = sum(r["status"] == "completed" for r in runs)
    body = [f'<p>{done} of {len(runs)} runs completed. Mean ± std (ddof 0) over seeds of the '
            "mean over clients after the last round (a cell with one seed shows its value "
            "alone).</p>"]
    cells = []
    for row in rows:
        seeds = ",".join(map(str, row["seeds"])) or "none"
        if row["failed"]:
            seeds += f" ({len(row['failed'])} failed)"
        cells.append([esc(row["method"]), *(esc(row[k]) for k in keys), esc(seeds),
                      *(esc(_fmt(row[k])) for k in METRICS), number(row["mb_per_round"], 3)])
    body.append(section("table", "Sweep table", table(
        ("method", *map(_short, keys), "seeds", *(NAMES[k] for k in METRICS), "MB / round"),
        cells, numeric_from=len(keys) + 2)))
    figs = "".join(figure(image(files[k].read_bytes(), caption), caption)
                   for k, caption in SWEEP_FIGURES.items() if k in files)
    body.append(section("figures", "Figures", figs or na("no figure")))
    body.append(section("runs", "Runs", table(
        ("folder", "method", "status", "I-AUROC", "error"),
        ([_run_link(sweep, r["folder"], out), esc(r["method"]), esc(r["status"]),
          number(r["final"].get("i_auroc")), esc(r["error"] or "")] for r in runs),
        numeric_from=3)))
    return page(f"Sweep {sweep.name}", "".join(body), SWEEP_SECTIONS)


def write_sweep_report(sweep: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """:func:`~fedad.evaluation.sweep_report.make_report`'s files and ``report.html``
    beside them (key ``html``)."""
    from fedad.evaluation.sweep_report import make_report

    files = make_report(sweep, out)
    path = files["json"].parent / REPORT
    path.write_text(sweep_html(sweep, files), encoding="utf-8")
    return {**files, "html": path}


# -- either -------------------------------------------------------------------------------


def run_dir_of(folder: str | Path) -> Path | None:
    """The run folder ``folder`` is (it has ``rounds.json``) or holds as its only run
    (a ``fedad-sim`` output folder with one ``run-*``); ``None``: not a run.

    Raises:
        FedadError: ``folder`` holds several runs, naming them.
    """
    folder = Path(folder)
    if (folder / "rounds.json").is_file():
        return folder
    runs = sorted(p for p in folder.glob("run-*") if (p / "rounds.json").is_file())
    if len(runs) > 1:
        raise FedadError(f"{folder}: {len(runs)} runs ({', '.join(p.name for p in runs)}); "
                         "give one run folder")
    return runs[0] if runs else None


def write_report(folder: str | Path, out: str | Path | None = None) -> tuple[str, dict[str, Path]]:
    """``report.html`` of a run folder (``("run", {"html": ...})``, to ``out``/report.html
    or the run folder) or of a sweep folder (``("sweep", files)``, see
    :func:`write_sweep_report`).

    Raises:
        FedadError: ``folder`` is neither a run nor a sweep folder, or is unreadable.
    """
    run = run_dir_of(folder)
    if run is not None:
        return "run", {"html": write_run_report(run, Path(out) / REPORT if out else None)}
    return "sweep", write_sweep_report(folder, out)
