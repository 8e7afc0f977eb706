"""A site's side of secure aggregation (``secure.enabled``): Flower's SecAgg+ client mod
runs the protocol's key exchange and masking on the train messages of its workflow
(:mod:`server.secure`); everything else reaches the ClientApp as it is. In the masking
stage the mod asks the ClientApp for its FitRes: the site trains as always and answers
with its encoded sum terms (:func:`fedad.federation.site.train`), which the mod quantises,
masks and sends in place of the upload."""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from clients.codec import envelope_of_fitins, fitres_of
from fedad.federation.records import Envelope, Reply
from fedad.privacy.secure_sum import SECURE

FITINS = "fitins.parameters"  # the array record of a legacy FitIns (SecAgg+'s train)


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+'s mod for the protocol's messages; other messages pass through untouched."""
    if (msg.metadata.message_type == MessageType.TRAIN
            and RECORD_KEY_CONFIGS in msg.content.config_records):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    """A train message of the SecAgg+ workflow (legacy FitIns) rather than fedad's own."""
    return FITINS in msg.content.array_records


def secure_envelope(msg: Message) -> Envelope:
    return envelope_of_fitins(compat.recorddict_to_fitins(msg.content, keep_input=True))


def secure_reply(reply: Reply, msg: Message) -> Message:
    """The site's encoded sum terms as the FitRes the mod masks."""
    if SECURE not in reply.records:
        raise RuntimeError("secure aggregation: the site produced no sum terms "
                           "(is secure.enabled set on every host?)")
    return Message(content=compat.fitres_to_recorddict(
        fitres_of(reply.records[SECURE], reply.metrics), keep_input=True), reply_to=msg)
