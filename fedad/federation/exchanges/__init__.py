"""The one list of exchanges: what travels between sites and server and how the server
combines it. Everything that depends on *which* exchange a run uses asks here (or the
exchange object itself); nothing else compares their names.

Add an exchange: write ``fedad/federation/exchanges/<name>.py`` with a subclass of
:class:`~fedad.federation.exchanges.base.Exchange` (or of
:class:`~fedad.federation.exchanges.weights.WeightExchange` when a module's weights
travel), add one line to :data:`EXCHANGES`, and name it in the ``exchanges`` of the
detectors it supports.
"""

from __future__ import annotations

import importlib

from fedad.errors import ConfigError
from fedad.federation.exchanges.base import Exchange

# name -> "module:Class" (imported on first use)
EXCHANGES: dict[str, str] = {
    "summary": "fedad.federation.exchanges.summary:SummaryExchange",
    "local": "fedad.federation.exchanges.local:LocalExchange",
    "fedavg": "fedad.federation.exchanges.fedavg:FedAvgExchange",
    "fedprox": "fedad.federation.exchanges.fedprox:FedProxExchange",
    "scaffold": "fedad.federation.exchanges.scaffold:ScaffoldExchange",
    "fedbn": "fedad.federation.exchanges.fedbn:FedBNExchange",
    "rowfed": "fedad.federation.exchanges.rowfed:RowFedExchange",
    "fedphp": "fedad.federation.exchanges.fedphp:FedPHPExchange",
    "apple": "fedad.federation.exchanges.apple:APPLEExchange",
    "dbe": "fedad.federation.exchanges.dbe:DBEExchange",
}


def exchange_class(name: str) -> type[Exchange]:
    """The class registered under ``name``."""
    if name not in EXCHANGES:
        raise ConfigError(f"exchange must be one of {', '.join(EXCHANGES)}, got {name!r}")
    module, cls = EXCHANGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
