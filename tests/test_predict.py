"""fedad-predict: a site scores new images with its state, the global summary and a
threshold calibrated on its held-out normal training images only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedad.cli.predict import main as predict_main
from fedad.config.schema import RunConfig
from fedad.data.export import write_mvtec
from fedad.data.factory import build_dataset
from fedad.detectors.registry import feature_config, resolve
from fedad.errors import ConfigError, DataError
from fedad.evaluation.saved_site import calibrate
from fedad.federation.centralized import run_centralized
from fedad.federation.predict import (
    check_reconstruction,
    false_alarm_rate,
    predict,
    site_scorer,
)
from fedad.federation.site_data import load_client_data

TINY = dict(texture_train_per_type=8, texture_test_normal_per_type=1,
            texture_test_anomalous_per_type=1, image_size=64)


def site_folder(root: Path) -> Path:
    cfg = RunConfig()
    for k, v in TINY.items():
        setattr(cfg.dataset, k, v)
    for split in ("train", "test"):
        ds = build_dataset(cfg.dataset, split)
        write_mvtec(ds.source, ds.records, split, root)
    return root


def make_run(tmp: Path, detector: str, exchange: str = "summary",
             **train) -> tuple[Path, RunConfig, np.ndarray, list[str]]:
    """A one-site run on the engine (fedad-centralized): what the server and the site
    leave behind in the run folder."""
    cfg = RunConfig(detector=detector, exchange=exchange)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.dataset.name, cfg.dataset.root = "mvtec", str(site_folder(tmp / "site"))
    cfg.dataset.image_size = 64
    cfg.padim.channels = 16
    cfg.calibration.holdout, cfg.calibration.quantile = 0.35, 0.75
    cfg.train.rounds = 1
    if detector == "asymst":  # its smallest run: a DDPM, a student and a head round
        from tests.test_exchanges import tiny_asymst

        tiny_asymst(cfg)
    if detector == "diffad":
        from tests.test_exchanges import tiny_diffad

        tiny_diffad(cfg)
        cfg.diffad.rounds = 2  # gradient denoising rounds of --reconstruct
    run = tmp / "run-1"
    run_centralized(cfg, run)
    data = load_client_data(feature_config(resolve(cfg)), 0, 1)
    assert data.holdout is not None and len(data.holdout) >= 4
    # the held-out images are training images the detector never fits on, never test ones
    assert not set(data.holdout.paths) & set(data.train.paths)
    assert not set(data.holdout.paths) & set(data.test.paths)
    cal = json.loads((run / "site-0" / "calibration.json").read_text())
    return run, cfg, np.asarray(cal["holdout_scores"]), data.holdout.paths


@pytest.mark.parametrize("detector", ["padim", "feddymem", "feddymem-set-bank",
                                      "feddymem-fedavg", "asymst-fedavg"])
def test_predict_reproduces_held_out_scores_and_false_alarm_rate(tmp_path: Path, detector):
    """Bank runs score with the global summary; a weight run (fedavg) with the site's own
    bank, kept in its folder."""
    train = ({"reduce": "coreset", "aggregation": "coreset"}
             if detector == "feddymem-set-bank" else {})
    exchange = "fedavg" if detector.endswith("fedavg") else "summary"
    run, cfg, held, paths = make_run(tmp_path, detector.split("-")[0], exchange, **train)
    # a weight run's site keeps its own summary (FedDyMem's bank; asymst's is empty)
    assert (run / "site-0" / "global_summary.npz").is_file() == (exchange == "fedavg")
    cal = json.loads((run / "site-0" / "calibration.json").read_text())
    thr = cal["threshold"]
    # at most 1 - quantile of the held-out normals score above the threshold
    assert false_alarm_rate(held, thr) <= 1 - cfg.calibration.quantile + 1e-12
    assert thr == max(s for s in held if s <= thr)  # a real held-out score
    folder = tmp_path / "new"
    folder.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, folder / f"{i:02d}.png")
    out = tmp_path / "pred"
    assert predict_main([str(run), str(folder), "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == len(paths)
    scores = np.array([float(r["score"]) for r in rows])
    assert np.allclose(scores, held, rtol=1e-3, atol=1e-4)  # the same images, same scores
    flags = np.array([int(r["anomalous"]) for r in rows])
    assert flags.mean() == pytest.approx(false_alarm_rate(scores, thr))
    assert len(list((out / "heatmaps").glob("*.png"))) == len(paths)


def test_predict_reconstructs_a_diffad_runs_images_on_a_padim_runs_statistics(
        tmp_path: Path):
    """A diffad run (its site keeps its own feature statistics) scores its held-out images
    as the run did, and writes each one's reconstruction."""
    run, _, held, paths = make_run(tmp_path / "a", "diffad", "fedavg")
    assert (run / "site-0" / "global_summary.npz").is_file()
    padim_run, _, _, _ = make_run(tmp_path / "b", "padim")
    folder = tmp_path / "new"
    folder.mkdir()
    for i, p in enumerate(paths):
        shutil.copy(p, folder / f"{i:02d}.png")
    out = tmp_path / "pred"
    assert predict_main([str(run), str(folder), "--out", str(out), "--no-heatmaps",
                         "--reconstruct", "--padim-run", str(padim_run), "-q"]) == 0
    scores = np.array([float(r["score"]) for r in csv.DictReader(open(out / "scores.csv"))])
    assert np.allclose(scores, held, rtol=1e-3, atol=1e-4)  # the same images, same scores
    made = sorted((out / "reconstructed").glob("*.png"))
    assert [p.name for p in made] == [f"{i:03d}-{i:02d}.png" for i in range(len(paths))]
    from PIL import Image

    original = np.asarray(Image.open(paths[0]).convert("RGB").resize((64, 64)), float)
    rebuilt = np.asarray(Image.open(made[0]), float)
    assert rebuilt.shape == (64, 64, 3) and not np.array_equal(rebuilt, original)
    # the same model gives F2PAD its initial image (f2pad.init=diffusion) on the base
    # detector's score: here PaDiM's, from its run
    from fedad.refinements.f2pad.diffusion_init import diffusion_reconstructor

    base = site_scorer(padim_run, 0, torch.device("cpu"))
    padim = base.detector
    rebuild = diffusion_reconstructor(run, 0, padim, base.summary, base.extractor, 64)
    image = torch.zeros(3, 64, 64)
    assert rebuild(image).shape == (3, 64, 64) and not torch.equal(rebuild(image), image)
    # Algorithm 1's settings are the caller's when given (the model stays the run's)
    from fedad.detectors.diffad.config import DiffADConfig

    none = diffusion_reconstructor(run, 0, padim, base.summary, base.extractor, 64,
                                   algorithm=DiffADConfig(rounds=0))
    assert torch.allclose(none(image), image, atol=1e-5)
    with pytest.raises(ConfigError, match="reconstructs nothing"):
        diffusion_reconstructor(padim_run, 0, padim, base.summary, base.extractor, 64)
    # refused before anything is scored, naming what is wrong
    scorer = site_scorer(run, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--padim-run"):
        check_reconstruction(scorer, None)
    with pytest.raises(ConfigError, match="no differentiable score"):
        check_reconstruction(scorer, run)
    assert predict_main([str(padim_run), str(folder), "--reconstruct", "--padim-run",
                         str(padim_run), "-q"]) == 2  # not a diffad run


def test_predict_names_what_is_wrong(tmp_path: Path):
    run, _, _, paths = make_run(tmp_path, "padim")
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(paths[0], folder / "ok.png")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        predict(run, folder)
    preds, _, _, skipped = predict(run, folder, skip_bad=True)
    assert [Path(p.path).name for p in preds] == ["ok.png"]
    assert [Path(b.path).name for b in skipped] == ["broken.png"]
    assert "broken.png" in skipped[0].error
    with pytest.raises(ConfigError, match="site-3"):
        predict(run, folder, site=3, skip_bad=True)
    assert predict_main([str(tmp_path / "nowhere"), str(folder)]) == 2


def test_skip_bad_lists_what_it_skipped_everywhere_it_writes(tmp_path: Path, capsys):
    run, _, _, paths = make_run(tmp_path, "padim")
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(paths[0], folder / "ok.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    assert predict_main([str(run), str(folder), "--skip-bad", "--no-heatmaps",
                         "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert "1 unreadable image(s) skipped" in console and "broken.png" in console
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [Path(r["path"]).name for r in rows] == ["ok.png", "broken.png"]
    assert rows[0]["error"] == "" and rows[1]["score"] == "" and "broken.png" in rows[1]["error"]
    saved = json.loads((out / "predictions.json").read_text())
    assert saved[1]["score"] is None and "broken.png" in saved[1]["error"]


def test_calibration_quantile_is_a_real_score_and_bounds_false_alarms():
    rng = np.random.default_rng(0)
    s = rng.normal(size=1000)
    cal = calibrate(s, 0.99)
    assert cal.threshold in s and false_alarm_rate(s, cal.threshold) <= 0.01
    assert false_alarm_rate(s, cal.threshold) >= 0.009  # about 1%, not 0
    assert calibrate(None, 0.99).threshold is None
    with pytest.raises(ConfigError, match="quantile"):
        calibrate(s, 1.5)


def test_a_toy_refinement_plugs_in_without_touching_the_engine(tmp_path: Path):
    """tests/toy_refinement.py registers a refinement from outside fedad (a plug-in with
    its own config section): a run with refine=toythreshold reports its metrics (averaged
    and per site) and leaves its level in the site's folder, and fedad-predict refines new
    images with it."""
    from fedad.config.sections import section
    from fedad.federation.compose import check
    from tests.toy_refinement import ToyThreshold, ToyThresholdConfig

    cfg = RunConfig(detector="padim", refine="toythreshold", plugins=["tests.toy_refinement"],
                    sections={"toythreshold": {"quantile": 0.9}})
    check(cfg)
    assert section(cfg, "toythreshold", ToyThresholdConfig).quantile == 0.9
    with pytest.raises(ConfigError, match="toythreshold.quantile must be in"):
        check(RunConfig(detector="padim", refine="toythreshold",
                        plugins=["tests.toy_refinement"],
                        sections={"toythreshold": {"quantile": 2.0}}))
    cfg.dataset.name, cfg.dataset.root = "mvtec", str(site_folder(tmp_path / "site"))
    cfg.dataset.image_size, cfg.padim.channels = 64, 16
    cfg.calibration.holdout = 0.35
    run = tmp_path / "run-1"
    run_centralized(cfg, run)
    final = json.loads((run / "rounds.json").read_text())["final"]
    assert 0 <= final["toy_masked"]["mean"] <= 1
    level = final["per_client"]["0"]["toy_level"]
    assert json.loads((run / "site-0" / "toy-level.json").read_text())["level"] == level
    folder = tmp_path / "new"
    shutil.copytree(tmp_path / "site" / "brick" / "test" / "good", folder)
    out = tmp_path / "pred"
    assert predict_main([str(run), str(folder), "--out", str(out), "-q"]) == 0
    masks = sorted((out / "refined").glob("*-mask.png"))
    assert len(masks) == len(list(folder.iterdir())) and ToyThreshold.name == cfg.refine


def test_a_negative_site_is_refused_by_name(tmp_path: Path, capsys):
    from fedad.cli.export import main as export_main

    for main in (predict_main, export_main):
        args = [str(tmp_path), str(tmp_path)] if main is predict_main else [str(tmp_path)]
        with pytest.raises(SystemExit) as stop:
            main([*args, "--site", "-1"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "--site must be a site's id, 0 or more (got -1)" in err and "site--1" not in err
