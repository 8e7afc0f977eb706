"""Flower ServerApp adapters: strategies that move records and call :mod:`fedad`."""
