"""Local anomaly detectors. Each is a pure ``nn.Module`` plus plain functions on tensors."""
