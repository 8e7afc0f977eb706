"""The OmegaConf resolvers that ``conf/`` uses, registered on import (by :mod:`fedad.cli.sim`
and :mod:`fedad.cli.overrides`, the two ways a config is composed)."""

from __future__ import annotations

from omegaconf import OmegaConf

from fedad.config.schema import DataConfig

DEFAULT_IMAGE_SIZE: int = DataConfig.__dataclass_fields__["image_size"].default


def texture_image_size(name: str, crop: int) -> int:
    """``dataset.image_size`` of ``conf/dataset/textures.yaml``: the embedded textures at
    their crop size (``dataset.texture_crop``, 160: scoring them upsampled to 224 px costs
    twice the time and adds no detail); any other data on that group (``dataset.name=mtd``)
    at the schema's default, 224."""
    return int(crop) if name == "textures" else DEFAULT_IMAGE_SIZE


if not OmegaConf.has_resolver("fedad.texture_image_size"):
    OmegaConf.register_new_resolver("fedad.texture_image_size", texture_image_size)
