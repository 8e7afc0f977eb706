"""Benchmark scripts (run as ``python benchmarks/<name>.py``); a regular package so that
its modules win over the stray top-level ``benchmarks`` package opacus 1.6 installs."""
