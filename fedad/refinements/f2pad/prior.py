"""Eq. 9: the pixel prior, a mixture of Gaussians over RGB values fitted by variational
Bayes on pixels sampled from a site's own normal training images (it never leaves the
site). scikit-learn's ``BayesianGaussianMixture`` stands in for the paper's algorithm [44]
(seed-methods.md: a close offline stand-in). Eq. 10 uses only the means and inverse
covariances."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

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
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    if components < 1:
        raise ConfigError(f"f2pad: the pixel prior needs >= 1 component, got {components}")
    if len(pixels) < components:
        raise ConfigError(f"f2pad: {len(pixels)} pixels cannot fit {components} components")
    mix = BayesianGaussianMixture(n_components=components, covariance_type="full",
                                  reg_covar=reg, random_state=seed, max_iter=200)
    with warnings.catch_warnings():  # a prior, not a density to report: 200 VB steps
        warnings.simplefilter("ignore", ConvergenceWarning)
        mix.fit(np.asarray(pixels, dtype=np.float64))
    means = torch.from_numpy(mix.means_).float()
    inv = torch.linalg.inv(torch.from_numpy(mix.covariances_)).float()
    return PixelPrior(means, inv)


PRIOR_FILE = "f2pad.npz"  # under <run dir>/site-<id>/: the site's prior and threshold


def save_prior(folder: str | Path, prior: PixelPrior, threshold: float) -> Path:
    """The site's pixel prior and its calibrated pixel threshold, for ``fedad-predict``
    (they stay at the site: the file is in the site's own folder)."""
    path = Path(folder) / PRIOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, means=prior.means.numpy(), inv_covs=prior.inv_covs.numpy(),
             threshold=np.array([threshold], dtype=np.float64))
    return path


def load_prior(folder: str | Path) -> tuple[PixelPrior, float]:
    """What :func:`save_prior` wrote.

    Raises:
        ConfigError: the file is missing, naming it and how to get it.
    """
    path = Path(folder) / PRIOR_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; F2PAD needs the site's pixel prior, which a run "
                          "with refine=f2pad leaves in the site's folder")
    with np.load(path) as z:
        return (PixelPrior(torch.from_numpy(z["means"]).float(),
                           torch.from_numpy(z["inv_covs"]).float()), float(z["threshold"][0]))
