"""Errors of the results package (kept apart so the reader need not import the writer)."""

from __future__ import annotations

from fedmpi.errors import FedMPIError


class ResultsError(FedMPIError):
    """A results file is missing, unreadable, damaged or not a fedmpi results file.

    Every reader error is one of these, naming the file and the object that failed,
    whatever h5py raised underneath (OSError, RuntimeError, KeyError, ...).
    """


class ResultsExistError(ResultsError, FileExistsError):
    """A run would overwrite an existing results file without being told to."""


class ResultsLockedError(ResultsError):
    """Another process is writing the results file (it holds the writer lock)."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}
