"""Whether a validation AUROC can tell anything apart from chance.

The validation split of a site is its held-out normal training images, each once as it is
and once with a synthetic defect (:mod:`fedad.data.synthetic`): ``n`` normals and ``n``
defects. With a handful of images an image AUROC of 0.55 is what a detector that scores at
random gets about as often as not, and a number that cannot rank the variants must not be
printed as if it could (see ``benchmarks/validation_signal.py`` for how the validation score
ranks variants against the test score).

Under the null hypothesis (scores independent of the labels) the AUROC of ``n1`` positives
and ``n0`` negatives is the Mann-Whitney statistic divided by ``n1 * n0``; its mean is 1/2
and its variance ``(n0 + n1 + 1) / (12 n0 n1)`` (Mann & Whitney 1947; Hanley & McNeil 1982,
Eq. 1 with A = 1/2). The mean of ``K`` sites' independent AUROCs has the variance
``sum_k var_k / K^2``. A validation mean is called *informative* when it lies more than
``Z`` null standard deviations above 1/2 (one-sided, about 2.3% of chance runs pass): a
necessary condition for ranking anything, fixed a priori.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Z = 2.0  # null standard deviations above 1/2 (one-sided); fixed a priori, not tuned


def null_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUROC of ``n_pos`` positives and ``n_neg`` negatives whose
    scores do not depend on the label (``inf`` when either is 0)."""
    if n_pos <= 0 or n_neg <= 0:
        return math.inf
    return math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


@dataclass(frozen=True)
class ValidationSignal:
    """The mean validation image AUROC over sites and how far it lies from chance."""

    mean: float
    sites: int
    images: int  # normals + defects over the sites
    chance_sd: float  # null standard deviation of the mean

    @property
    def z(self) -> float:
        return (self.mean - 0.5) / self.chance_sd if self.chance_sd > 0 else math.inf

    @property
    def informative(self) -> bool:
        return math.isfinite(self.mean) and self.z > Z

    def describe(self) -> str:
        """``validation i_auroc 0.9312`` or, when it cannot rank, the reason instead of a
        metric."""
        if self.informative:
            return f"validation i_auroc {self.mean:.4f}"
        return (f"validation not informative (i_auroc {self.mean:.2f} lies within "
                f"{Z:g} x {self.chance_sd:.2f} of chance, 0.5: {self.images} image(s) at "
                f"{self.sites} site(s))")

    def as_dict(self) -> dict:
        return {"mean": self.mean, "sites": self.sites, "images": self.images,
                "chance_sd": self.chance_sd, "z": self.z, "informative": self.informative}


def validation_signal(per_client: Mapping[str, Mapping[str, float]]) -> ValidationSignal | None:
    """The signal of the sites' ``val_i_auroc`` (plain mean, as the round's log shows it),
    each site holding ``val-images`` images, half of them defects; ``None`` when no site
    holds a validation split."""
    sites = [v for v in per_client.values() if "val_i_auroc" in v]
    if not sites:
        return None
    var = 0.0
    for v in sites:
        n = int(v.get("val-images", 0)) // 2
        var += null_sd(n, n) ** 2
    mean = sum(float(v["val_i_auroc"]) for v in sites) / len(sites)
    return ValidationSignal(mean, len(sites), sum(int(v.get("val-images", 0)) for v in sites),
                            math.sqrt(var) / len(sites))
