"""Errors of the results package (kept apart so the reader need not import the writer)."""

from __future__ import annotations

from fedmpi.errors import FedMPIError


class ResultsError(FedMPIError):
    """A results file is missing, unreadable or not a fedmpi results file."""


class ResultsExistError(ResultsError, FileExistsError):
    """A run would overwrite an existing results file without being told to."""
