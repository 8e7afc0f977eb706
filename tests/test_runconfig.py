"""The flat run config mirrors RunConfig exactly, and pyproject carries its defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from fedad.config.flat import from_flat, to_flat, toml_table
from fedad.config.schema import DataConfig, RunConfig
from fedad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_defaults_and_changes():
    assert from_flat(to_flat(RunConfig())) == RunConfig()
    cfg = RunConfig()
    cfg.dataset.name = "mixed"
    cfg.dataset.parts = [DataConfig(name="mtd", root="/x", categories=["exp1", "exp2"])]
    cfg.dataset.root = None
    cfg.backbone.layers = [2, 3]
    cfg.train.lr = 0.5
    cfg.head.generator = False
    flat = to_flat(cfg)
    assert flat["backbone.layers"] == "2,3" and flat["dataset.root"] == ""
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())
    assert from_flat(flat) == cfg


def test_overrides_parse_types_and_reject_unknown_keys():
    cfg = from_flat({"train.local_epochs": 3, "partition.alpha": 0.5, "head.projection": "false",
                     "dataset.categories": "exp1, exp3"})
    assert cfg.train.local_epochs == 3 and cfg.partition.alpha == 0.5
    assert cfg.head.projection is False and cfg.dataset.categories == ["exp1", "exp3"]
    with pytest.raises(ConfigError, match="train.epochs"):
        from_flat({"train.epochs": 3})
    with pytest.raises(ConfigError, match="train.local_epochs='many'"):
        from_flat({"train.local_epochs": "many"})


def test_pyproject_flower_config_equals_dataclass_defaults():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    assert dict(flatten(table)) == to_flat(RunConfig()), (
        "pyproject.toml [tool.flwr.app.config] is out of date; regenerate it with\n"
        "python -c 'from fedad.config.flat import toml_table; print(toml_table())'\n"
        + toml_table())


def test_the_textures_default_to_their_crop_size_and_other_data_to_224():
    from fedad.cli.overrides import compose

    assert compose([]).dataset.scored_size() == 160  # the embedded textures' crop
    assert compose(["dataset.texture_crop=128"]).dataset.scored_size() == 128
    assert compose(["dataset.image_size=64"]).dataset.scored_size() == 64
    for switch in (["dataset.name=mtd"], ["dataset=mtd"]):  # not the textures' size
        assert compose([*switch, "dataset.root=/x"]).dataset.scored_size() == 224


def test_fedad_sim_and_flwr_run_score_the_textures_at_the_same_size(tmp_path: Path):
    """The run config a Flower app reads under ``flwr run .`` (pyproject's table, as Flower
    fuses it) and under ``fedad-sim`` (Hydra's defaults written to run_config.toml and
    fused the same way) resolve to one image size: the textures' crop."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from fedad.cli.sim import run_config_of, write_run_config
    from fedad.detectors.registry import resolve

    flwr_run = get_fused_config_from_dir(ROOT, {})
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        sim = OmegaConf.to_object(hydra_compose("config"))
    toml = write_run_config(run_config_of(sim), tmp_path / "run_config.toml")
    fedad_sim = get_fused_config_from_dir(ROOT, parse_config_args([str(toml)]))
    sizes = {resolve(from_flat(c)).dataset.image_size for c in (flwr_run, fedad_sim)}
    assert sizes == {160}  # dataset.texture_crop
    crop = {**flwr_run, "dataset.texture_crop": 128}
    assert resolve(from_flat(crop)).dataset.image_size == 128


@pytest.mark.parametrize(("override", "meant"), [
    ("num_round=2", "train.rounds"), ("+num_round=2", "train.rounds"),
    ("num_rounds=3", "train.rounds"), ("train.round=3", "train.rounds"),
    ("train.batchsize=4", "train.batch_size"), ("local_epochs=2", "train.local_epochs")])
def test_an_unknown_key_is_answered_with_the_key_meant(override: str, meant: str):
    from fedad.cli.overrides import compose

    with pytest.raises(ConfigError) as err:
        compose([override])
    text = str(err.value)
    assert f"did you mean {meant}?" in text and "+" not in text.replace(override, "")


@pytest.mark.parametrize(("override", "field"), [
    ("train.rounds=-1", "train.rounds=-1 must be >= 0"),
    ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("train.local_epochs=0", "train.local_epochs=0 must be >= 1"),
    ("partition.min_samples=0", "partition.min_samples=0 must be >= 1"),
    ("dataset.image_size=7", "dataset.image_size=7 must be >= 8"),
    ("calibration.holdout=1.0", "calibration.holdout=1.0 must be in [0, 1)")])
def test_impossible_values_are_refused_before_anything_starts(override: str, field: str):
    from fedad.cli.overrides import compose

    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        compose([override])
    compose(["train.rounds=0", "dataset.image_size=0"])  # 0: the detector's / data's own


def test_fedad_sim_refuses_an_unknown_key_before_hydra_parses_it(capsys):
    from fedad.cli.sim import check_argv

    check_argv(["-m", "train.rounds=1,2", "hydra.sweep.dir=x", "backbone=lite1"])  # all known
    with pytest.raises(SystemExit) as stop:
        check_argv(["num_round=2", "train.seed=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "fedad-sim: error: num_round is not a config key; did you mean " \
                          "train.rounds?"


def test_a_sections_keys_compose_from_the_command_line_and_a_misspelt_one_is_named(capsys):
    """``+sections.<name>.<key>=`` (how docs/anomalib.md and docs/development.md say a
    plug-in's or a family's section is set) passes the key check and reaches the section's
    dataclass, which names a key it does not have."""
    from fedad.cli.overrides import compose
    from fedad.cli.sim import check_argv

    base = ["detector=toyae", "plugins=[tests.toy_trainable]", "exchange=fedavg"]
    check_argv([*base, "+sections.toyae.hidden=6"])  # not refused before Hydra parses it
    assert capsys.readouterr().err == ""
    assert compose([*base, "+sections.toyae.hidden=6"]).sections == {"toyae": {"hidden": 6}}
    with pytest.raises(ConfigError, match="sections.toyae.widht"):
        compose([*base, "+sections.toyae.widht=6"])
    with pytest.raises(ConfigError, match=r"is set as \+sections.toyae.hidden="):
        compose([*base, "toyae.hidden=6"])  # the section's key without its prefix
    with pytest.raises(ConfigError, match=r"train.zzzzzzzz is not a config key \(fedad-sim"):
        compose(["train.zzzzzzzz=1"])  # a key of the schema's own sections: no such advice


def test_a_refused_run_leaves_no_folder_and_one_line(tmp_path: Path):
    import subprocess
    import sys

    out = tmp_path / "out"
    res = subprocess.run([str(Path(sys.executable).parent / "fedad-sim"), "train.rounds=-1",
                          f"hydra.run.dir={out}"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fedad-sim: error: train.rounds=-1 must be >= 0 (0: the detector's own number of "
        "rounds)"]
    assert not out.exists()  # Hydra's run folder was never made


def test_a_ray_address_without_a_cluster_is_refused_before_launch():
    import socket

    from fedad.cli.sim import check_ray_address

    with socket.socket() as listening:  # something answers: accepted
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_ray_address(f"127.0.0.1:{listening.getsockname()[1]}")
        free = listening.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"ray_address=127.0.0.1:{free}: no Ray cluster "
                                          r"answers there.*ray start --head"):
        check_ray_address(f"127.0.0.1:{free}")
    with pytest.raises(ConfigError, match="expected <head host>:<port> or auto"):
        check_ray_address("headnode")
    check_ray_address("auto")  # left to Ray
