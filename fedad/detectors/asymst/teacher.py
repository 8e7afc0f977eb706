"""The teacher: the frozen backbone's levels at ``asymst.strides`` (4/8/16 for Lite0: 24,
40 and 112 channels), each map as it is (no pooling, no fusion: the losses and the head
compare level by level, as DeSTSeg does)."""

from __future__ import annotations

from fedad.config.schema import RunConfig
from fedad.features.levels import Levels, level_channels

Teacher = Levels


def teacher_channels(cfg: RunConfig) -> tuple[int, ...]:
    """Channels of each teacher level, without loading weights."""
    return level_channels(cfg.backbone, cfg.asymst.strides)


def build_teacher(cfg: RunConfig) -> Teacher:
    """The frozen teacher of ``cfg`` (its backbone at ``asymst.strides``)."""
    return Levels(cfg.backbone, cfg.asymst.strides)
