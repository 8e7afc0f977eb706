"""The start-up data check (a Flower ``query`` message before any round): the client loads
its data (and caches its features) and says which files it could not read. With
``dataset.on_bad=refuse`` (default) it sends the list instead of training; with ``skip`` it
trains without them and the list goes into the run's results."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.context import client_setup, node_data
from fedad.errors import BadFilesError
from fedad.payload import FILES, METRICS


def data_check(msg: Message, context: Context) -> Message:
    """Reply with ``refused`` (0/1), image counts and the unreadable files."""
    site = node_data(context).site
    metrics: dict = {"partition-id": site}
    try:
        _, data, seconds = client_setup(context)
    except BadFilesError as exc:
        return Message(content=RecordDict({
            METRICS: MetricRecord({**metrics, "refused": 1}),
            FILES: ConfigRecord({"bad-files": list(exc.files)})}), reply_to=msg)
    sets = [data.train, data.test, data.holdout, data.validation]
    skipped = list(dict.fromkeys(f for s in sets if s is not None for f in s.skipped))
    content = RecordDict({METRICS: MetricRecord({
        **metrics, "refused": 0, "train-images": len(data.train),
        "test-images": len(data.test), "seconds-features": seconds})})
    if skipped:
        content[FILES] = ConfigRecord({"skipped-files": skipped})
    return Message(content=content, reply_to=msg)
