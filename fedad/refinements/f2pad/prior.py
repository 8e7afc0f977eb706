"""Eq. 9: the pixel prior, a mixture of Gaussians over RGB values fitted by variational
Bayes on pixels sampled from a site's own normal training images (it never leaves the
site). scikit-learn's ``BayesianGaussianMixture`` stands in for the paper's algorithm [44]
(seed-methods.md: a close offline stand-in). Eq. 10 uses only the means and inverse
covariances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedad.errors import ConfigError


@dataclass(frozen=True)
class PixelPrior:
    """Component means ``(Q, 3)`` and inverse covariances ``(Q, 3, 3)`` (float32)."""

    means: torch.Tensor
    inv_covs: torch.Tensor


def sample_pixels(images: torch.Tensor, count: int, seed: int = 0) -> np.ndarray:
    """``count`` pixels ``(count, 3)`` drawn uniformly (without replacement when there are
    enough) from ``images`` ``(N, 3, H, W)``."""
    pixels = images.movedim(1, -1).reshape(-1, images.shape[1])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pixels), size=min(count, len(pixels)), replace=False)
    return pixels[torch.from_numpy(np.sort(pick))].double().numpy()


def fit_pixel_prior(pixels: np.ndarray, components: int, seed: int = 0,
                    reg: float = 1e-4) -> PixelPrior:
    """A ``components``-Gaussian mixture of ``pixels`` ``(P, 3)`` by variational Bayes
    (full covariances, ``reg`` added to their diagonals for a stable inverse).

    Raises:
        ConfigError: fewer pixels than components, or a component count below 1.
    """
    from sklearn.mixture import BayesianGaussianMixture

    if components < 1:
        raise ConfigError(f"f2pad: the pixel prior needs >= 1 component, got {components}")
    if len(pixels) < components:
        raise ConfigError(f"f2pad: {len(pixels)} pixels cannot fit {components} components")
    mix = BayesianGaussianMixture(n_components=components, covariance_type="full",
                                  reg_covar=reg, random_state=seed, max_iter=200)
    mix.fit(np.asarray(pixels, dtype=np.float64))
    means = torch.from_numpy(mix.means_).float()
    inv = torch.linalg.inv(torch.from_numpy(mix.covariances_)).float()
    return PixelPrior(means, inv)
