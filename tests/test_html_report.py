"""report.html: what a run leaves (written at the end of every run, by the real engine on a
tiny one-site run), self-contained, escaped, with image-level-only data, through
``fedad-report`` for a run and a sweep, and as headless Chromium shows it."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedad.cli.report import main as report_main
from fedad.config.flat import from_dict, toml_table
from fedad.config.schema import RunConfig
from fedad.evaluation.cases import CASES, load_scores
from fedad.evaluation.html_report import (
    REPORT,
    RUN_SECTIONS,
    SWEEP_SECTIONS,
    report_after_run,
    roc_curves,
    write_run_report,
)
from fedad.evaluation.run_status import write_status
from fedad.federation.centralized import run_centralized
from tests.test_predict import site_folder

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def tiny_run(tmp: Path, masks: bool) -> Path:
    """A one-site PaDiM run on the engine (what ``fedad-centralized`` runs), on the tiny
    textures written as an MVTec folder (``masks=False``: no ``ground_truth`` folders, an
    image-level-only set)."""
    root = site_folder(tmp / "site")
    if not masks:
        for gt in list(root.glob("*/ground_truth")):
            shutil.rmtree(gt)
    cfg = RunConfig(detector="padim")
    cfg.dataset.name, cfg.dataset.root, cfg.dataset.image_size = "mvtec", str(root), 64
    cfg.padim.channels = 16
    cfg.calibration.holdout, cfg.calibration.quantile = 0.35, 0.75
    cfg.train.rounds, cfg.examples = 1, 0
    run_centralized(cfg, tmp / "run-1")
    return tmp / "run-1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("html-report")
    return {"masks": tiny_run(base / "masks", True),
            "image-level": tiny_run(base / "image-level", False)}


@contextmanager
def fedad_log() -> Iterator[list[str]]:
    """The ``fedad`` logger's messages while in the block (``setup_logging`` stops it
    propagating, so caplog may not see them)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("fedad")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def pngs(text: str) -> list[Image.Image]:
    """Every inlined image of a page, decoded."""
    out = []
    for b64 in DATA_URI.findall(text):
        img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        img.load()
        out.append(img)
    return out


def final_row(text: str, name: str) -> str:
    """The cell after ``name`` in the final-metrics table."""
    final = text.split('<section id="final">')[1].split("</section>")[0]
    return final.split(f"<td>{name}</td>")[1].split("</td>")[0]


def test_a_run_leaves_a_self_contained_report(runs):
    run = runs["masks"]
    text = (run / REPORT).read_text(encoding="utf-8")
    # self-contained: no URL to load, no script, no stylesheet link
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    for anchor, _ in RUN_SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    cfg, result = (json.loads((run / n).read_text()) for n in ("config.json", "rounds.json"))
    title = text.split("<title>")[1].split("</title>")[0]
    assert title == "padim run: mvtec, 1 clients, 1 rounds"
    for key, value in (("detector", cfg["detector"]), ("exchange", cfg["exchange"])):
        assert f"<td>{key}</td><td>{value}</td>" in text
    final = result["final"]
    for name, key in (("I-AUROC", "i_auroc"), ("P-AUROC", "p_auroc"), ("PRO", "pro")):
        assert final_row(text, name).endswith(
            f"{final[key]['mean']:.4f} ± {final[key]['std']:.4f}"), name
    images = pngs(text)
    # metrics per round, ROC, and 4 panels for each of the 3 cases
    assert len(images) == 2 + 4 * len(CASES)
    assert all(img.format == "PNG" and min(img.size) > 8 for img in images)
    assert text.count('class="thumb"') == 4 * len(CASES)


def test_the_site_keeps_what_the_roc_and_the_cases_need(runs):
    run = runs["masks"]
    (site,) = load_scores(run)
    result = json.loads((run / "rounds.json").read_text())
    per_client = result["final"]["per_client"]["0"]
    assert len(site.scores) == len(site.labels) == len(site.paths) == 6
    # the ROC's area is the run's own I-AUROC: the same scores of the same images
    assert roc_curves([site])["client 0"][2] == pytest.approx(per_client["i_auroc"])
    assert site.image_threshold == pytest.approx(per_client["threshold"])
    assert site.pixel_threshold is not None and site.has_masks
    assert [c.name for c in site.cases] == [name for name, _, _ in CASES]
    normal, missed, best = site.cases
    assert normal.label == 0 and missed.label == best.label == 1
    assert normal.score == site.scores[site.labels == 0].max()
    assert missed.score == site.scores[site.labels == 1].min()
    assert best.score == site.scores[site.labels == 1].max()
    assert best.image.shape == (64, 64, 3) and best.image.dtype == np.uint8
    assert best.mask is not None and best.mask.any() and not normal.mask.any()
    assert best.amap.shape == (64, 64)


def test_an_image_level_only_run_has_a_report_with_pixel_parts_n_a(runs):
    text = (runs["image-level"] / REPORT).read_text(encoding="utf-8")
    for anchor, _ in RUN_SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    assert "n/a" in final_row(text, "P-AUROC") and "n/a" in final_row(text, "PRO")
    assert "±" in final_row(text, "I-AUROC")
    (site,) = load_scores(runs["image-level"])
    assert not site.has_masks and all(c.mask is None for c in site.cases)
    # image, map and thresholded mask per case; the ground-truth panel says n/a
    assert text.count('class="thumb"') == 3 * len(CASES)
    assert len(pngs(text)) == 2 + 3 * len(CASES)


def test_text_is_escaped(runs, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs["masks"], run)
    result = json.loads((run / "rounds.json").read_text())
    result["notes"] = ['<script>alert("x")</script> & <b>co</b>']
    (run / "rounds.json").write_text(json.dumps(result))
    text = write_run_report(run).read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>co</b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in text


def test_a_report_that_fails_is_a_warning(tmp_path: Path):
    with fedad_log() as messages:
        assert report_after_run(tmp_path) is None  # no config.json, no rounds.json
    assert any("no report.html" in m and "config.json" in m for m in messages), messages
    assert not (tmp_path / REPORT).exists()


def fake_sweep(folder: Path, run: Path) -> Path:
    """A sweep folder as ``fedad-sim -m`` leaves it: job 0 completed (``run``), job 1
    failed."""
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    for job in ("0", "1"):
        (folder / job / ".hydra").mkdir(parents=True)
        (folder / job / "run_config.toml").write_text(toml_table(cfg, header=None))
    shutil.copytree(run, folder / "0" / run.name)
    write_status(folder / "0", "completed", ["train.seed=0"], run_dir=Path(run.name))
    write_status(folder / "1", "failed", ["train.seed=1"], error="Boom <here>")
    return folder


def test_fedad_report_writes_a_run_or_a_sweep_report(runs, tmp_path: Path, capsys):
    run = tmp_path / "run-1"
    shutil.copytree(runs["masks"], run)
    (run / REPORT).unlink()
    assert report_main([str(run)]) == 0
    assert (run / REPORT).is_file() and str(run / REPORT) in capsys.readouterr().out
    sweep = fake_sweep(tmp_path / "sweep", runs["masks"])
    assert report_main([str(sweep)]) == 0
    assert "1 of 2 runs completed" in capsys.readouterr().out  # the Markdown, as before
    report = sweep / "report"
    assert {p.name for p in report.iterdir()} >= {"report.md", "report.csv", "report.json",
                                                  "rounds.png", REPORT}
    text = (report / REPORT).read_text(encoding="utf-8")
    for anchor, _ in SWEEP_SECTIONS:
        assert f'<section id="{anchor}">' in text, anchor
    assert 'href="../0/run-1/report.html"' in text  # the completed run's own page
    assert "Boom &lt;here&gt;" in text
    assert len(pngs(text)) == 4
    assert report_main([str(tmp_path / "missing")]) == 2
    shutil.copytree(run, tmp_path / "run-2")  # two runs in one folder: which one?
    with fedad_log() as messages:
        assert report_main([str(tmp_path)]) == 2
    assert any("2 runs (run-1, run-2)" in m for m in messages), messages


@pytest.mark.skipif(not CHROMIUM.is_file(),
                    reason="no /usr/bin/chromium (Debian: apt-get install -y chromium)")
def test_the_report_in_headless_chromium(runs, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("report_browser",
                                                  ROOT / "benchmarks" / "report_browser.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    report = runs["masks"] / REPORT
    res = browser.check_report(report, tmp_path / "shot.png",
                               browser.expected_sections(report), 800, 600)
    assert res["failures"] == [], res
    assert res["images"] == 2 + 4 * len(CASES) and res["console"] == []
    assert Image.open(tmp_path / "shot.png").size == (800, 600)
    # the same check fails a page that loads from the network and logs an error
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png">'
                   "<script>console.error('broken')</script></body></html>")
    res = browser.check_report(bad, tmp_path / "bad.png", ["final"], 400, 300)
    failures = " ".join(res["failures"])
    assert "console" in failures and "external_requests" in failures
    assert "section #final missing" in failures and "did not decode" in failures
