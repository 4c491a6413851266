"""HDF5 results: one file per run (schema in `schema.py`), a writer for rank 0 and
a reader that returns pandas DataFrames.

The reader and pandas are imported lazily: the MPI server only needs the writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedmpi.results.checkpoint import Checkpoint, read_checkpoint
from fedmpi.results.errors import ResultsError, ResultsExistError, ResultsLockedError
from fedmpi.results.schema import SCHEMA_VERSION, schema_markdown
from fedmpi.results.writer import ResultsWriter

if TYPE_CHECKING:
    from fedmpi.results.reader import Results

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "Results",
    "ResultsError",
    "ResultsExistError",
    "ResultsLockedError",
    "ResultsWriter",
    "load",
    "read_checkpoint",
    "schema_markdown",
]


def load(paths: Any, **kwargs: Any) -> Results:
    """Load one file, a glob, a directory or a list of them (see `reader.load`)."""
    from fedmpi.results.reader import load as _load

    return _load(paths, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Results":
        from fedmpi.results.reader import Results

        return Results
    raise AttributeError(name)
