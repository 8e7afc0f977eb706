"""Flower ClientApp adapters: move messages in and out, call :mod:`fedad` for the work."""
