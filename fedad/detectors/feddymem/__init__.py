"""FedDyMem (Chen et al.): projection, memory generator, metric loss, memory-reduce."""

from fedad.detectors.feddymem.client import FedDyMemClient
from fedad.detectors.feddymem.detector import FedDyMem
from fedad.detectors.feddymem.generator import MemoryGenerator
from fedad.detectors.feddymem.head import FedDyMemHead
from fedad.detectors.feddymem.loss import metric_loss
from fedad.detectors.feddymem.projection import Projection
from fedad.detectors.feddymem.reduce import MemoryReducer, memory_reduce

__all__ = ["FedDyMem", "FedDyMemClient", "FedDyMemHead", "MemoryGenerator", "MemoryReducer",
           "Projection", "memory_reduce", "metric_loss"]
