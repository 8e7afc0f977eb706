"""Frozen features: the backbone and Eq. 8's fusion (:mod:`.extractor`), loading its weights
(:mod:`.backbones`) and computing each image's features once (:mod:`.cache`)."""
