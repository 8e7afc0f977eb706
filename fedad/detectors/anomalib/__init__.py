"""anomalib's image models as fedad detectors (``detector=anomalib``, the ``anomalib``
extra): a site trains or fits the model with anomalib's own code, and the exchange its
state fits federates it (weights for a trained network, Gaussian statistics or a memory
bank for PaDiM and PatchCore). docs/anomalib.md says which models run and how."""
