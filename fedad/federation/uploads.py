"""How a round's uploads reach the exchange: as they are (:class:`AsSent`), or as one sum
of every site's encoded terms that Flower's SecAgg+ unmasks (:class:`SecureSum`,
``secure.enabled``; the composed check has made sure the exchange's server step is a sum,
:attr:`~fedad.exchanges.base.Exchange.summable`). A site's train step
(:func:`fedad.federation.site.train`) packs its upload with the run's way, the round loop
(:meth:`fedad.federation.server.Server.run`) delivers and accepts with it; neither
branches on secure aggregation."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from fedad.config.schema import RunConfig
from fedad.exchanges.base import Exchange
from fedad.exchanges.records import Records
from fedad.federation.records import TRAIN, Envelope
from fedad.privacy.secure_sum import SECURE, encode, quantization_range

if TYPE_CHECKING:  # annotations only (the server imports this module)
    from fedad.federation.server import Delivery, Server, Transport

log = logging.getLogger("fedad")


class RoundUploads(ABC):
    """One way for a round's uploads to travel."""

    @abstractmethod
    def pack(self, cfg: RunConfig, exchange: Exchange, upload: Records, num_examples: int,
             round_t: int, site: int) -> tuple[Records, dict[str, float]]:
        """At a site: what leaves it for ``upload``, and notes for the round's record."""

    @abstractmethod
    def deliver(self, server: Server, transport: Transport, envelopes: dict[int, Envelope],
                timeout: float, desc: str, round_t: int) -> Delivery:
        """At the server: send the round's train messages and collect what comes back."""

    @abstractmethod
    def accept(self, server: Server, round_t: int, delivery: Delivery) -> dict:
        """At the server: hand what came back to the exchange; the round's train record."""


class AsSent(RoundUploads):
    """Each site's upload reaches the server as it is, checked one by one."""

    def pack(self, cfg, exchange, upload, num_examples, round_t, site):
        return upload, {}

    def deliver(self, server, transport, envelopes, timeout, desc, round_t):
        return transport.send(TRAIN, envelopes, timeout, desc)

    def accept(self, server, round_t, delivery):
        return server.accept(round_t, delivery)


class SecureSum(RoundUploads):
    """Only the scaled sum terms leave a site (:mod:`fedad.privacy.secure_sum`); SecAgg+
    masks them and the server sees their sum over the sites that stayed."""

    def pack(self, cfg, exchange, upload, num_examples, round_t, site):
        terms = exchange.sum_terms(upload, num_examples)
        encoded, clipped = encode(terms, exchange.sum_scales(round_t),
                                  cfg.secure.clipping_range)
        if clipped:
            log.warning("site %d: %d value(s) beyond the public bounds of the secure sum "
                        "(secure.bound=%g, secure.max_images=%d) are clipped", site, clipped,
                        cfg.secure.bound, cfg.secure.max_images)
        return {SECURE: encoded}, {"secure-clipped": clipped}

    def deliver(self, server, transport, envelopes, timeout, desc, round_t):
        return transport.secure_sum(envelopes, timeout, desc,
                                    list(server.exchange.sum_scales(round_t)),
                                    quantization_range(server.cfg.secure, len(envelopes)))

    def accept(self, server, round_t, delivery):
        return server.accept_sum(round_t, delivery)


def uploads_for(cfg: RunConfig) -> RoundUploads:
    """The run's way: :class:`SecureSum` with ``secure.enabled``, else :class:`AsSent`."""
    return SecureSum() if cfg.secure.enabled else AsSent()
