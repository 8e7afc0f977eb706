"""fedad: federated unsupervised image anomaly detection (FedDyMem and baselines).

The core of this package never imports Flower; only :mod:`fedad.cli` launches runs.
"""

__version__ = "0.1.0"
