"""Names of what travels between clients and server (no Flower here): ``clients/`` and
``server/`` wrap the arrays in Flower records under these names."""

from __future__ import annotations

BANK = "bank"  # ArrayRecord name and array key of a memory bank
CONFIG = "config"  # ConfigRecord name of per-round instructions
METRICS = "metrics"  # MetricRecord name of a reply's numbers
NUM_EXAMPLES = "num-examples"
FILES = "files"  # start-up data check: ConfigRecord of unreadable files (clients/check.py)
ARRAYS = "arrays"  # model weights (the key Flower's FedAvg/FedProx use)
CV_SERVER = "server-cv"  # SCAFFOLD: the server's control variate, sent with the weights
CV_DELTA = "cv-delta"  # SCAFFOLD: a client's control-variate change, sent with its weights

PHASE_INIT = "init"  # round 0: build the first reduced bank (Alg. 4)
PHASE_TRAIN = "train"  # rounds >= 1: Alg. 5 ClientUpdate

