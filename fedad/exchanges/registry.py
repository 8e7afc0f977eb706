"""The one list of exchanges: what travels between sites and server and how the server
combines it. Everything that depends on *which* exchange a run uses asks here (or the
exchange object itself); nothing else compares their names.

Add an exchange: write ``fedad/exchanges/<name>.py`` with a subclass of
:class:`~fedad.exchanges.base.Exchange` (or of
:class:`~fedad.exchanges.weights.WeightExchange` when a module's weights
travel), state the detector capabilities it needs in ``requires``
(:mod:`fedad.detectors.capabilities`), and add one line to :data:`EXCHANGES`: every detector
that declares them can be federated by it.
"""

from __future__ import annotations

import importlib

from fedad.errors import ConfigError
from fedad.exchanges.base import Exchange

# name -> "module:Class" (imported on first use)
EXCHANGES: dict[str, str] = {
    "summary": "fedad.exchanges.summary:SummaryExchange",
    "local": "fedad.exchanges.local:LocalExchange",
    "fedavg": "fedad.exchanges.fedavg:FedAvgExchange",
    "fedprox": "fedad.exchanges.fedprox:FedProxExchange",
    "scaffold": "fedad.exchanges.scaffold:ScaffoldExchange",
    "fedbn": "fedad.exchanges.fedbn:FedBNExchange",
    "rowfed": "fedad.exchanges.rowfed:RowFedExchange",
    "fedphp": "fedad.exchanges.fedphp:FedPHPExchange",
    "apple": "fedad.exchanges.apple:APPLEExchange",
    "dbe": "fedad.exchanges.dbe:DBEExchange",
}


def exchange_class(name: str) -> type[Exchange]:
    """The class registered under ``name``."""
    if name not in EXCHANGES:
        raise ConfigError(f"exchange must be one of {', '.join(EXCHANGES)}, got {name!r}")
    module, cls = EXCHANGES[name].split(":")
    return vars(importlib.import_module(module))[cls]
