"""A toy exchange that needs what no detector here offers: a capability of its own
(:class:`Sketches`), so every composed run that names it is refused, naming it."""

from __future__ import annotations

from abc import abstractmethod

from fedad.detectors.capabilities import Capability
from fedad.exchanges.weights import WeightExchange


class Sketches(Capability):
    """A detector that can draw a sketch of its module (no detector declares it)."""

    what = "a sketch of its module"

    @abstractmethod
    def sketch(self) -> dict:
        """The sketch."""


class ToySketch(WeightExchange):
    name = "toysketch"
    requires = (*WeightExchange.requires, Sketches)
