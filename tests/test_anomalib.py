"""anomalib's models as fedad detectors (fedad/detectors/anomalib; the anomalib extra, which
CI installs): the family resolves to its members, each declares the exchange its state
fits, they are built offline and federated through Flower's simulation runtime, a trained
one resumes exactly, PaDiM's federated statistics are anomalib's own fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig
from fedad.detectors.registry import create, resolve, supported
from fedad.errors import ConfigError
from fedad.federation.compose import check
from fedad.federation.in_process import InProcess
from fedad.federation.run import federate, run_folder
from partitions import partition_nodes
from tests.test_asymst import Interrupted, KilledInRound

pytest.importorskip("anomalib", reason='the anomalib extra is not installed '
                                       '(pip install -e ".[anomalib]")')

TINY = {"num_clients": 2, "partition.min_samples": 1, "dataset.texture_train_per_type": 6,
        "dataset.texture_test_normal_per_type": 2, "dataset.texture_test_anomalous_per_type": 2,
        "dataset.image_size": 64, "examples": 0}


def tiny(model: str, exchange: str, **changes) -> RunConfig:
    """Two sites of tiny textures, ``model`` (a trained one: 4 steps, 2 a round, on 32-px
    images, scored after its last round)."""
    section = {"model": model, "steps": 4, **changes.pop("section", {})}
    trained = {"dataset.image_size": 32, "eval_every": 10**9} if exchange != "summary" else {}
    return from_flat({"detector": "anomalib", "exchange": exchange, **TINY, **trained,
                      "train.local_steps": 2, "sections": {"anomalib": section}, **changes})


def test_the_family_resolves_to_its_member_which_declares_its_exchanges():
    cfg = resolve(tiny("stfpm", "fedavg"))
    assert cfg.detector == "anomalib-stfpm" and cfg.train.rounds == 2
    assert resolve(cfg).detector == "anomalib-stfpm"  # idempotent
    assert {"fedavg", "fedprox", "scaffold", "fedbn"} <= set(supported("anomalib-stfpm"))
    assert supported("anomalib-padim") == ["summary"]
    with pytest.raises(ConfigError, match="exchange=summary requires Summarizes"):
        check(tiny("stfpm", "summary"))
    with pytest.raises(ConfigError, match="exchange=fedavg requires Trainable"):
        check(tiny("padim", "fedavg"))


@pytest.mark.parametrize("model,says", [
    ("efficient_ad", "downloads at run time"),
    ("dinomaly", "DINOv2"),
    ("cflow", "manual optimisation"),
    ("nosuchmodel", "must be one of stfpm, draem, fre, padim, patchcore"),
])
def test_a_model_fedad_cannot_run_is_refused_when_composed_saying_why(model: str, says: str):
    with pytest.raises(ConfigError, match=says):
        check(tiny(model, "fedavg"))


def test_a_backbone_without_offline_weights_is_refused_naming_how_to_supply_them():
    with pytest.raises(ConfigError, match="not resnet18; use weights=timm .* or a local"):
        check(tiny("stfpm", "fedavg", **{"backbone.name": "resnet18"}))
    # inside the model: a pretrained request for any other network is refused, not fetched
    import timm

    from fedad.detectors.anomalib.offline import offline_backbones

    with offline_backbones(RunConfig().backbone), pytest.raises(
            ConfigError, match="'resnet18' weights.*backbone.weights=/path/to/its/weights"):
        timm.create_model("resnet18", pretrained=True)
    assert timm.create_model.__module__.startswith("timm")  # put back


def test_the_teacher_gets_fedads_offline_weights():
    cfg = resolve(tiny("stfpm", "fedavg"))
    det = create(cfg, None, "cpu", seed=0)
    from fedad.features.backbones import create_backbone

    full = create_backbone(cfg.backbone.name, cfg.backbone.weights).state_dict()
    teacher = det.module().teacher_model.feature_extractor.state_dict()
    assert teacher and all(torch.equal(v, full[k]) for k, v in teacher.items())
    student = det.module().student_model.feature_extractor.state_dict()
    assert not torch.equal(student["conv_stem.weight"], full["conv_stem.weight"])


@pytest.mark.parametrize("model", ["stfpm", "draem", "fre"])
def test_the_declared_optimiser_is_anomalibs_own(model: str):
    """What the part declares (name, rate, weight decay) is what anomalib's own
    configure_optimizers builds, and the site steps that very optimiser object."""
    from fedad.detectors.anomalib.models import MODELS

    det = create(resolve(tiny(model, "fedavg")), None, "cpu", seed=0)
    made = det.lm.configure_optimizers()
    while isinstance(made, (list, tuple)):
        made = made[0]
    spec = MODELS[model].optim
    assert type(made).__name__.lower() == spec.name
    assert made.defaults["lr"] == spec.lr and made.defaults["weight_decay"] == spec.weight_decay
    # its parameters are exactly the part's (what the weight exchanges move)
    part = {id(p) for n, p in det.module().named_parameters() if n.startswith(MODELS[model].part)}
    assert {id(p) for g in made.param_groups for p in g["params"]} == part


def test_padims_federated_statistics_are_anomalibs_own_fit_on_every_image(tmp_path: Path):
    """Two sites' statistics merged (float32 uploads) give the maps anomalib's own
    Gaussian fit on both sites' images together gives (to 1e-3 of their scale)."""
    cfg = tiny("padim", "summary", **{"calibration.holdout": 0})  # every image trains
    server = federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0, 1], tmp_path / "run")
    glob = dict(np.load(tmp_path / "run" / "global_summary.npz"))
    rcfg = resolve(cfg)
    det = create(rcfg, None, "cpu", seed=0)
    from fedad.detectors.registry import feature_config
    from fedad.federation.site_data import load_client_data

    data = load_client_data(feature_config(rcfg), 0, 1)  # both sites' images
    assert int(glob["count"][0]) == len(data.train.features)
    federated = det.score(data.test.features, glob, 64)
    det.lm.model.gaussian(det.embeddings(data.train.features))  # anomalib's own fit
    with torch.no_grad():
        own = det.lm.model.eval()(data.test.features.float())
    scale = float(own.anomaly_map.abs().max())
    assert float((federated.maps - own.anomaly_map[:, 0]).abs().max()) < 1e-3 * scale
    assert torch.allclose(federated.image, own.pred_score.reshape(-1), rtol=1e-3)
    final = server.history[-1]["evaluate"]["per_client"]
    assert all(0.5 < v["i_auroc"] <= 1.0 for v in final.values())


def test_a_resumed_trained_model_equals_an_uninterrupted_one(tmp_path: Path):
    """Killed before round 2, resumed in fresh site stores: the student's weights and
    anomalib's own optimiser (SGD's momentum) come back, and every loss and metric equals
    a run never stopped."""
    cfg = tiny("stfpm", "fedavg", num_clients=1)  # 2 rounds of 2 steps, one site
    full = federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0], tmp_path / "full")
    out = tmp_path / "killed"
    with pytest.raises(Interrupted):
        federate(cfg, KilledInRound(cfg, partition_nodes(cfg), 2), [0], out)
    again = from_flat({**to_flat(cfg), "resume": str(out)})
    folder, ckpt = run_folder(again, tmp_path, "x")
    resumed = federate(again, InProcess(again, partition_nodes(again)), [0], folder, ckpt)
    assert [r["round"] for r in resumed.history] == [1, 2]
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["train"]["loss"] == b["train"]["loss"]
    assert resumed.history[-1]["evaluate"]["per_client"] == full.history[-1]["evaluate"][
        "per_client"]


@pytest.mark.slow
@pytest.mark.parametrize("model,exchange", [("stfpm", "fedavg"), ("patchcore", "summary")])
def test_an_anomalib_model_is_federated_through_flower(tmp_path: Path, model: str,
                                                      exchange: str):
    from fedad.cli.sim import launch
    from tests.test_simulation import tiny_sim

    sim = tiny_sim(detector="anomalib", exchange=exchange, examples=0, eval_every=2,
                   sections={"anomalib": {"model": model, "steps": 2}},
                   **{"train.local_steps": 1, "dataset.image_size": 32})
    out = tmp_path / "out"
    assert launch(sim, out) == 0
    (run,) = list(out.glob("run-*"))
    result = json.loads((run / "rounds.json").read_text())
    label = f"anomalib-{model}" + ("" if exchange == "summary" else f"+{exchange}")
    assert result["label"] == label and not result["rejected"]
    final = result["final"]["per_client"]
    assert set(final) == {"0", "1", "2"}
    assert all(math.isfinite(v["i_auroc"]) and 0 <= v["i_auroc"] <= 1 for v in final.values())
    if exchange == "fedavg":  # two rounds; the student's weights alone travel
        assert [r["round"] for r in result["rounds"]] == [1, 2]
        keys = result["received_keys"][0]
        assert keys and all(k.startswith("student_model.") for k in keys)
    else:
        assert np.load(run / "global_summary.npz")["bank"].shape[0] > 0


@pytest.mark.parametrize("model,steps", [("stfpm", 40), ("fre", 100)])
def test_a_trained_anomalib_model_learns_to_rank_a_planted_defect(model: str, steps: int):
    """anomalib's own training step and optimiser, ``steps`` steps at one site on 64-px
    stripes (house rule 3; the check fails on a constant score: tests/test_learning.py).
    Untrained it fails: with one step each the margins were -0.30 (STFPM) and -874 (FRE)."""
    from tests.test_learning import SIZE, check_learns, pixels

    cfg = from_flat({"detector": "anomalib", "exchange": "fedavg",
                     "dataset.image_size": SIZE, "train.local_steps": 50,
                     "train.batch_size": 8, "sections": {"anomalib": {"model": model,
                                                                      "steps": steps}}})
    check_learns(cfg, pixels(cfg))


def test_a_member_exports_to_onnx_with_pytorchs_scores_and_fre_is_refused(tmp_path: Path):
    """fedad-export on a trained member (STFPM, fedavg) and a memory-bank one (PatchCore,
    summary): anomalib's own forward as one graph that onnxruntime runs with
    fedad-predict's maps and scores; FRE, whose forward the tracer freezes at one batch
    size, is refused by its missing capability."""
    from PIL import Image

    from fedad.export import export_site, require_torch_score
    from fedad.export.runtime import compare

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # 5 images: onnxruntime runs them in one batch, not the traced 1
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    for model, exchange in (("stfpm", "fedavg"), ("patchcore", "summary")):
        cfg = tiny(model, exchange, num_clients=1)
        run = tmp_path / model
        federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0], run)
        out = export_site(run, 0, tmp_path / f"{model}.onnx")
        assert out.meta["detector"] == f"anomalib-{model}"
        check = compare(out.model, run, images, 0)
        assert check.images == 5
        assert check.max_score_diff <= 1e-4 * max(1.0, check.score_scale), check
        assert check.max_map_diff <= 1e-4 * max(1.0, check.score_scale), check
    fre = create(resolve(tiny("fre", "fedavg")), None, "cpu")
    with pytest.raises(ConfigError, match="an ONNX export .* requires TorchScore"):
        require_torch_score(fre)


@pytest.mark.parametrize("model,exchange,fault", [("padim", "summary", "shift"),
                                                  ("stfpm", "fedavg", "scale")])
def test_a_bad_and_a_poisoned_site_are_kept_out_of_a_members_federation(
        tmp_path: Path, model: str, exchange: str, fault: str):
    """Four sites, one uploading NaNs (rejected by validation, naming it) and one its
    statistics shifted or its weights scaled (dropped by robust aggregation): the run ends
    with the two honest sites' merge and every site evaluated."""
    cfg = tiny(model, exchange, num_clients=4, faults=["0:nan", f"3:{fault}"],
               **{"robust.enabled": True, "eval_every": 10**9})
    server = federate(cfg, InProcess(cfg, partition_nodes(cfg)), [0, 1, 2, 3], tmp_path)
    rounds = [r for r in server.history if r["train"]]
    assert rounds and all(r["train"]["clients"] == 2 for r in rounds)
    nan = [why for why in server.rejected if "non-finite" in why]
    assert len(nan) == len(rounds) and all("(partition 0)" in why for why in nan)
    assert len(server.robust_log) == len(rounds)
    assert all(len(e["dropped"]) == 1 and "(partition 3)" in e["dropped"][0]
               for e in server.robust_log)
    final = server.history[-1]["evaluate"]["per_client"]
    assert len(final) == 4 and all(math.isfinite(v["i_auroc"]) for v in final.values())
    report = (tmp_path / "report.html").read_text()  # the HTML report names what was left out
    assert f"anomalib-{model}" in report and "non-finite" in report
