"""PaDiM (Defard et al. 2021): a Gaussian per patch position, federated by exact sums."""

from fedad.detectors.padim.detector import PaDiM, upload_nbytes
from fedad.detectors.padim.statistics import (
    add_statistics,
    channel_subset,
    gaussian,
    inverse_covariance,
    mahalanobis,
    pack_upper,
    sufficient_statistics,
    unpack_upper,
)

__all__ = ["PaDiM", "add_statistics", "channel_subset", "gaussian", "inverse_covariance",
           "mahalanobis", "pack_upper", "sufficient_statistics", "unpack_upper",
           "upload_nbytes"]
