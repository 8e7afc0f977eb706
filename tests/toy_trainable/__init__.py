"""A trained detector and a personalised exchange written the way a contributor would add
them: this folder, and one registry line each (below). A run names the folder in
``plugins`` (tests/test_trainable.py); nothing in clients/, server/ or the engine changes."""

from fedad.detectors.registry import DETECTORS
from fedad.exchanges import EXCHANGES

DETECTORS["toyae"] = "tests.toy_trainable.detector:ToyAE"
EXCHANGES["toypersonal"] = "tests.toy_trainable.personal:ToyPersonal"
