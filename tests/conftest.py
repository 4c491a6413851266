"""Shared by every test layer: this directory is on sys.path, so `h5files` imports."""

import os


def pytest_report_header(config):
    """Which MPI the MPI and integration tests use (README "Tests"), when not the default."""
    chosen = {k: os.environ[k] for k in ("FEDMPI_MPIEXEC", "FEDMPI_PYTHON") if os.environ.get(k)}
    if chosen:
        return "fedmpi MPI: " + ", ".join(f"{k}={v}" for k, v in chosen.items())
    return None
