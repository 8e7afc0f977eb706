"""One schema, checked up front: every option of every conf group composes into a valid
config, and a choice field set to a value it does not allow fails when the config is
composed, naming the field and what it allows, before any process starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from fedad.cli.overrides import compose
from fedad.cli.sim import SimConfig, run_config_of  # registers the run_schema config
from fedad.config.fields import check_choices, choices_of
from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig
from fedad.detectors.registry import resolve
from fedad.errors import ConfigError
from fedad.federation.compose import check

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OPTIONS = [(group.name, option.stem) for group in sorted(CONF.iterdir()) if group.is_dir()
           for option in sorted(group.glob("*.yaml"))]


def test_the_conf_groups_are_all_listed():
    groups = {g for g, _ in OPTIONS}
    assert groups == {"backbone", "dataset", "method", "partition", "variant"}
    assert len(OPTIONS) >= 19


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_of_every_conf_group_composes(group: str, option: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        dcfg = hydra_compose(config_name="config", overrides=[f"{group}={option}"])
    sim = OmegaConf.to_object(dcfg)
    assert isinstance(sim, SimConfig)
    check(sim)  # choice fields and the detector x exchange pair
    if group == "method":  # the group and the method= alias name the same run
        alias = resolve(run_config_of(sim))
        plain = resolve(RunConfig(method=option))
        assert (alias.detector, alias.exchange) == (plain.detector, plain.exchange)
        assert option in (alias.detector, alias.exchange)


@pytest.mark.parametrize(("override", "field", "allowed"), [
    ("score.mode=nearst", "score.mode", "softmin, nearest"),
    ("feddymem.reduce=positionl", "feddymem.reduce", "positional, coreset, kmeans"),
    ("patchcore.merge=union", "patchcore.merge", "coreset, kmeans, concat"),
    ("partition.method=random", "partition.method", "dirichlet, iid, pathological"),
    ("dataset.name=mvtech", "dataset.name", "textures, mtd, mvtec, visa, mixed"),
])
def test_a_bad_choice_fails_at_compose_naming_field_and_values(override, field, allowed):
    with pytest.raises(ConfigError, match=f"{field}=.* is not one of: {allowed}"):
        compose([override])
    with pytest.raises(ConfigError, match=field):  # the Flower run config path too
        from_flat({**to_flat(RunConfig()), field: override.split("=", 1)[1]})


def test_every_bad_choice_is_named_at_once_and_nested_parts_are_checked():
    cfg = RunConfig()
    cfg.score.mode, cfg.backbone.cache = "max", "ram"
    with pytest.raises(ConfigError, match="backbone.cache='ram'.*score.mode='max'"):
        check_choices(cfg)
    parts = compose(["dataset.name=mixed"])
    parts.dataset.parts = [RunConfig().dataset, RunConfig().dataset]
    parts.dataset.parts[1].on_bad = "ignore"
    with pytest.raises(ConfigError, match=r"dataset.parts\[1\].on_bad='ignore'"):
        check_choices(parts)
    assert choices_of(type(cfg.score), "mode") == ("softmin", "nearest")


def test_a_bad_detector_method_pair_fails_at_compose():
    with pytest.raises(ConfigError, match="exchange=fedavg requires Trainable .*which "
                       "detector=padim does not declare"):
        compose(["method=fedavg", "detector=padim"])


def test_fedad_sim_refuses_a_bad_choice_before_anything_starts(tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", "from fedad.cli.sim import main; main()", "score.mode=nearst",
         f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "score.mode='nearst' is not one of: softmin, nearest" in text
    assert not (out / ".flwr").exists() and not list(out.glob("run-*"))  # no SuperLink
