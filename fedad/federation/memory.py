"""What a simulation's sites will hold in memory on this machine, estimated before launch,
so that a configuration that cannot fit is refused up front with what to change instead of
being killed by Ray's memory monitor half-way through.

The estimate counts what grows with the data (measured by ``benchmarks/scale.py``):

* the training features: every site's, in the client processes that serve them (an
  actor keeps each site it served), and again for the fit's working copy (patch rows,
  position rows); with ``backbone.stream=true`` one chunk per process instead;
* the held-out normals and their validation copies (``calibration.holdout``);
* the test set's features, once per client process;
* each client process's own memory (Python, torch, the backbone): :data:`PROCESS_BYTES`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from fedad.config.schema import RunConfig
from fedad.detectors.registry import feature_shape, resolve
from fedad.errors import ConfigError

PROCESS_BYTES = 1.0e9  # one client process before any data (scale.md: 0.85-1.0 GB)
HEADROOM = 0.9  # of the machine's memory an estimate may fill


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a simulation needs on this machine, by what they hold."""

    per_image: int
    train: float
    held: float
    test: float
    processes: int
    process: float

    @property
    def total(self) -> float:
        return self.train + self.held + self.test + self.process


def estimate(cfg: RunConfig, train_images: int, test_images: int,
             processes: int) -> MemoryEstimate:
    """The estimate (module docstring) for ``train_images`` training images over all sites,
    ``test_images`` test images and ``processes`` client processes at once."""
    shape = feature_shape(resolve(copy.deepcopy(cfg)))
    per = shape.channels * shape.height * shape.width * (2 if cfg.backbone.half else 4)
    holdout = cfg.calibration.holdout
    fit = train_images * (1 - holdout)
    if cfg.backbone.stream:
        train = 2.0 * per * processes * min(cfg.backbone.stream_chunk, fit)
    else:
        train = 2.0 * per * fit
    return MemoryEstimate(per_image=per, train=train, held=2.0 * per * train_images * holdout,
                          test=float(per * test_images * processes), processes=processes,
                          process=PROCESS_BYTES * processes)


def physical_memory() -> int | None:
    """This machine's memory in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(cfg: RunConfig, need: MemoryEstimate, memory: int | None) -> None:
    """Refuse a simulation whose estimate exceeds :data:`HEADROOM` of ``memory``.

    Raises:
        ConfigError: with the estimate's parts and what to change.
    """
    if memory is None or need.total <= HEADROOM * memory:
        return
    gb = 1e9
    fixes = []
    if not cfg.backbone.stream:
        fixes.append("backbone.stream=true (PaDiM and PatchCore read their training features "
                     "from a file, chunk by chunk)")
    if not cfg.backbone.half:
        fixes.append("backbone.half=true (features in float16: half the bytes)")
    fixes += ["a smaller dataset.image_size",
              f"a larger client_cpus (fewer client processes at once than {need.processes})",
              "or ray_address= of a Ray cluster with more memory"]
    raise ConfigError(
        f"this run needs about {need.total / gb:.1f} GB, more than {HEADROOM:.0%} of this "
        f"machine's {memory / gb:.1f} GB: training features {need.train / gb:.1f} GB "
        f"({need.per_image / 1e6:.2f} MB per image, with the fit's copy), held-out and "
        f"validation {need.held / gb:.1f} GB, the test set {need.test / gb:.1f} GB (once "
        f"in each of {need.processes} client processes), the processes themselves "
        f"{need.process / gb:.1f} GB. Set " + "; ".join(fixes))
