"""Fixtures for the Slurm tests: `cluster` skips (or under CI=true fails) without Slurm."""

from __future__ import annotations

import os

import pytest
from slurm_helpers import Jobs, cluster_problem


@pytest.fixture(scope="session")
def cluster() -> None:
    problem = cluster_problem()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Slurm tests must run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture
def jobs(cluster, tmp_path):
    j = Jobs(tmp_path)
    yield j
    j.cancel_all()  # a no-op for finished jobs; stops a stuck one from blocking the node
