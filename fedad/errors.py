"""Exceptions that name what was wrong (a file, a field, a client) so users can fix it."""

from __future__ import annotations


class FedadError(Exception):
    """Base class of every error fedad raises on purpose."""


class DataError(FedadError, ValueError):
    """A dataset, image or mask is missing, unreadable or inconsistent."""


class BankError(FedadError, ValueError):
    """A memory bank is malformed: wrong shape or dtype, or non-finite values."""


class ConfigError(FedadError, ValueError):
    """A configuration value is invalid."""


class BadFilesError(DataError):
    """Images or masks of a dataset that cannot be used; ``files`` lists each as
    ``"<path>: <reason>"``."""

    def __init__(self, message: str, files: list[str]) -> None:
        super().__init__(message)
        self.files = files
