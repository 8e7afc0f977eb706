"""Names of what travels besides the exchange's records (no Flower here): ``clients/`` and
``server/`` wrap a message's instructions, results and file lists in Flower records under
these names (:mod:`clients.codec`)."""

from __future__ import annotations

CONFIG = "config"  # ConfigRecord name of per-round instructions
METRICS = "metrics"  # MetricRecord name of a reply's numbers
NUM_EXAMPLES = "num-examples"
FILES = "files"  # start-up data check: ConfigRecord of unreadable files
NOTE = "note-"  # prefix of a fit metric the round record lists by site (FitInfo.notes)
