"""A trained detector and two exchanges written the way a contributor would add them: this
folder (the detector's config section included: config.py), and one registry line each
(below). A run names the folder in ``plugins`` (tests/test_trainable.py); nothing in
fedad/config/schema.py, clients/, server/ or the engine changes."""

from fedad.detectors.registry import DETECTORS
from fedad.exchanges.registry import EXCHANGES

DETECTORS["toyae"] = "tests.toy_trainable.detector:ToyAE"
EXCHANGES["toypersonal"] = "tests.toy_trainable.personal:ToyPersonal"
EXCHANGES["toysketch"] = "tests.toy_trainable.needs:ToySketch"
