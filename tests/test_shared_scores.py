"""A stateless detector's scores of the shared test set are computed once per process and
equal what each client would have computed; a detector with site state scores anew."""

from __future__ import annotations

import torch

from fedad.detectors.base import FeatureShape
from fedad.detectors.registry import client_seed, create
from fedad.evaluation import shared_scores
from fedad.features.cache import FeatureSet
from tests.test_detectors import features, tiny_cfg

SHAPE = FeatureShape(12, 4, 4)


def feature_set(n: int, seed: int) -> FeatureSet:
    return FeatureSet(features(n, seed, SHAPE), torch.zeros(n, dtype=torch.long), None,
                      [f"x{i}" for i in range(n)], ["t"] * n)


def test_stateless_scores_are_shared_and_equal_and_stateful_ones_are_not(monkeypatch):
    shared_scores.clear()
    calls = []
    for name in ("patchcore", "feddymem"):
        cfg = tiny_cfg(name)
        server = create(cfg, SHAPE, seed=0)
        clients = [create(cfg, SHAPE, seed=client_seed(cfg, i)) for i in range(2)]
        first = 0 if name == "feddymem" else 1
        for c, x in zip(clients, (features(3, 0, SHAPE), features(4, 1, SHAPE)), strict=True):
            c.fit(x, None, first)
        glob = server.merge([server.validate(c.summarize(first), "c") for c in clients], first)
        test = feature_set(5, 9)
        for c in clients:
            original = c.score
            monkeypatch.setattr(c, "score",
                                lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
        a, memo_a = shared_scores.score_shared(clients[0], cfg, test, glob, 16)
        memo_a["metrics"] = {"i_auroc": 0.5}
        b, memo_b = shared_scores.score_shared(clients[1], cfg, test, glob, 16)
        direct = create(cfg, SHAPE, seed=client_seed(cfg, 1))
        direct.load_state(clients[1].state())
        want = direct.score(test.features, glob, 16)
        assert torch.allclose(b.image, want.image) and torch.allclose(b.maps, want.maps)
        if name == "patchcore":  # no site state: the second client reuses the first's
            assert b is a and memo_b is memo_a and calls.count(name) == 1
            other = {k: v.copy() for k, v in glob.items()}
            other["bank"][0] += 1.0  # another summary: scored anew
            shared_scores.score_shared(clients[1], cfg, test, other, 16)
            assert calls.count(name) == 2
            shared_scores.score_shared(clients[1], cfg, feature_set(5, 9), other, 16)
            assert calls.count(name) == 3  # other features (same values): scored anew
        else:  # FedDyMem: each client's own head
            assert b is not a and memo_b == {} and calls.count(name) == 2
    shared_scores.clear()
