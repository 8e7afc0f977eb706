"""Differential privacy on what a site uploads (no Flower here).

* :mod:`~fedad.privacy.accountant`: (epsilon, delta) of repeated Gaussian releases by
  Renyi DP (Opacus' analysis), and the noise multiplier that meets a target;
* :mod:`~fedad.privacy.clipping`: per-row norm clipping and the public-data clip bound;
* :mod:`~fedad.privacy.statistics`: PaDiM's Gaussian statistics with clipped rows and
  Gaussian noise on the sums;
* :mod:`~fedad.privacy.lloyd`: a bank of private K-means centres (DP-Lloyd) in place of a
  coreset of real patch features.
"""
