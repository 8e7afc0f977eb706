"""(epsilon, delta) of a site's releases, by Renyi differential privacy.

Every private upload in fedad is a set of Gaussian mechanisms applied to the whole of a
site's training images (no subsampling: sampling rate 1), each with the same noise
multiplier ``z`` (noise standard deviation over L2 sensitivity). ``k`` such releases have
Renyi DP ``k * alpha / (2 z^2)`` at every order ``alpha`` (Mironov 2017, Prop. 7 and
Cor. 3); Opacus' analysis (``opacus.accountants.analysis.rdp``) computes it and converts it
to (epsilon, delta) (Balle et al. 2020, Thm. 21), minimised over a grid of orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedad.config.schema import PrivacyConfig
from fedad.errors import ConfigError

# Orders from just above 1 (what very small noise needs) to 2^20 (what large noise needs).
ORDERS = ([1.0 + x / 1000.0 for x in range(1, 10)] + [1.0 + x / 100.0 for x in range(1, 10)]
          + [1.0 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
          + [2.0**e for e in range(6, 21)])


def epsilon_spent(noise_multiplier: float, releases: int, delta: float) -> float:
    """epsilon of ``releases`` Gaussian mechanisms of noise multiplier ``noise_multiplier``
    at ``delta`` (``inf`` without noise)."""
    if releases < 1:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=releases,
                      orders=ORDERS)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def noise_multiplier(epsilon: float, delta: float, releases: int,
                     rtol: float = 1e-4) -> float:
    """The smallest noise multiplier (within ``rtol``) whose ``releases`` Gaussian
    mechanisms spend at most ``epsilon`` at ``delta``: bisection on its logarithm
    (epsilon falls as the noise grows).

    Raises:
        ConfigError: epsilon or delta out of range.
    """
    if not epsilon > 0:
        raise ConfigError(f"privacy.epsilon must be > 0 to calibrate noise, got {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"privacy.delta must be in (0, 1), got {delta}")
    if releases < 1:
        raise ConfigError(f"privacy: need at least one release, got {releases}")
    lo, hi = 1e-6, 1e6
    if epsilon_spent(hi, releases, delta) > epsilon:
        raise ConfigError(f"privacy.epsilon={epsilon} is too small to reach with "
                          f"{releases} releases at delta={delta}")
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        if epsilon_spent(mid, releases, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class Budget:
    """What one site's private uploads spend over a run: ``releases`` Gaussian mechanisms of
    noise multiplier ``noise_multiplier``, together ``(epsilon, delta)``-DP."""

    epsilon: float
    delta: float
    noise_multiplier: float
    releases: int

    def notes(self) -> dict[str, float]:
        """The budget as a site's record lists it (``rounds.json``, ``train.site-notes``)."""
        return {"dp-epsilon": self.epsilon, "dp-delta": self.delta,
                "dp-noise-multiplier": self.noise_multiplier,
                "dp-releases": float(self.releases)}


def calibrated(privacy: PrivacyConfig, releases: int) -> Budget:
    """The budget of ``releases`` mechanisms whose noise meets ``privacy.epsilon`` and
    ``privacy.delta``; its ``epsilon`` is what that noise actually spends (at most the
    target, by ``rtol``).

    Raises:
        ConfigError: a missing clip bound, or a target that cannot be met.
    """
    if not privacy.clip > 0:
        raise ConfigError("privacy.clip must be > 0 with privacy.epsilon > 0 (the L2 bound "
                          "of one feature row, fixed from public images)")
    z = noise_multiplier(privacy.epsilon, privacy.delta, releases)
    return Budget(epsilon_spent(z, releases, privacy.delta), privacy.delta, z, releases)
