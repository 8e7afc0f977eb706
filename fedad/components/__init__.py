"""Components shared by every detector and exchange, on plain sets of rows (no Flower, no
detector): greedy k-center coresets, exact k-NN (faiss and a differentiable torch twin),
K-means, Gaussian statistics combined exactly across sites, and the one upload validator.

No detector imports another detector's module: what two detectors share lives here.
"""
