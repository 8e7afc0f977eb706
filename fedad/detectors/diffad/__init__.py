"""Anomalies removed as noises: a diffusion model of normal images with a feature head
(seed 003, Lu et al. ICCV 2023), federated by weight exchange (``detector=diffad``)."""
