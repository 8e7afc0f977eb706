"""PaDiM (Defard et al. 2021): a Gaussian per patch position, federated by exact
statistics (count, mean, centred scatter): the detector (:mod:`.detector`), the statistics
(:mod:`.statistics`) and its config section (:mod:`.config`). Nothing is imported here."""
