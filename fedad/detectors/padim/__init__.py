"""PaDiM (Defard et al. 2021): a Gaussian per patch position, federated by exact
statistics (count, mean, centred scatter)."""

from fedad.detectors.padim.detector import PaDiM, upload_nbytes
from fedad.detectors.padim.statistics import channel_subset, position_rows

__all__ = ["PaDiM", "channel_subset", "position_rows", "upload_nbytes"]
