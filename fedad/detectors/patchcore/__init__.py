"""PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection") on the
federated detector contract: clients upload greedy coresets of their locally aware patch
features, the server reduces their union to the global memory bank (:mod:`.detector`; its
config section: :mod:`.config`). Nothing is imported here."""
