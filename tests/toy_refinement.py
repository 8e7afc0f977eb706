"""A toy refinement written the way a contributor would add one: this module (its config
section included) and one registry line (at the bottom). It thresholds a differentiable
detector's maps at a quantile of the site's held-out normal maps; nothing in
fedad/federation/site.py, server.py or predict.py names it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fedad.config.sections import section
from fedad.errors import ConfigError
from fedad.evaluation.differentiable import RefinedSet
from fedad.refinements.base import Refinement, SiteInputs, SiteOutcome
from fedad.refinements.registry import REFINEMENTS

SECTION = "toythreshold"
LEVEL = "toy-level.json"


@dataclass
class ToyThresholdConfig:
    quantile: float = 0.99  # of the held-out normals' pixel scores


class ToyThreshold(Refinement):
    name = "toythreshold"
    averaged_keys = ("toy_masked",)  # the fraction of test pixels above the level
    site_keys = ("toy_level",)
    sections = {SECTION: ToyThresholdConfig}

    @classmethod
    def check_config(cls, cfg) -> None:
        q = section(cfg, SECTION, ToyThresholdConfig).quantile
        if not 0 < q < 1:
            raise ConfigError(f"sections.toythreshold.quantile must be in (0, 1), got {q}")

    @classmethod
    def at_site(cls, inputs: SiteInputs) -> SiteOutcome:
        q = section(inputs.cfg, SECTION, ToyThresholdConfig).quantile
        normals = (inputs.holdout_maps if inputs.holdout_maps is not None
                   else inputs.scores.maps)
        level = float(torch.quantile(normals.flatten().float()[:100_000], q))
        masked = float((inputs.scores.maps > level).float().mean())

        def save(folder: Path) -> None:
            (folder / LEVEL).write_text(json.dumps({"level": level}))

        return SiteOutcome({"toy_masked": masked, "toy_level": level}, save)

    @classmethod
    def on_new_images(cls, site_folder, inputs, images, maps, names) -> RefinedSet:
        path = Path(site_folder) / LEVEL
        if not path.is_file():
            raise ConfigError(f"{path}: missing (the run was not refine=toythreshold)")
        level = json.loads(path.read_text())["level"]
        return RefinedSet(masks=maps > level, maps=maps, normals=images,
                          status=["refined"] * len(names))


REFINEMENTS["toythreshold"] = "tests.toy_refinement:ToyThreshold"
