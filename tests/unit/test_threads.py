"""run.threads: unset (null) follows Slurm's --cpus-per-task; the value used is stored."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from fedmpi import config as cfgmod
from fedmpi.errors import ConfigError
from fedmpi.experiment import effective_threads

ROOT = Path(__file__).resolve().parents[2]
CORES = os.cpu_count() or 1


def test_unset_threads_follow_slurm_cpus_per_task():
    assert effective_threads(None, {}) == 1
    assert effective_threads(None, {"SLURM_CPUS_PER_TASK": "2"}) == min(2, CORES)
    assert effective_threads(None, {"SLURM_CPUS_PER_TASK": "100000"}) == CORES  # capped


def test_explicit_threads_win_over_slurm():
    assert effective_threads(1, {"SLURM_CPUS_PER_TASK": "2"}) == 1
    assert effective_threads(3, {}) == 3


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_slurm_value_is_a_config_error_naming_run_threads(bad):
    with pytest.raises(ConfigError) as info:
        effective_threads(None, {"SLURM_CPUS_PER_TASK": bad})
    assert info.value.field == "run.threads" and repr(bad) in str(info.value)


def test_null_is_the_default_and_zero_is_refused():
    assert cfgmod.from_dict({}).run.threads is None
    assert cfgmod.from_dict({"run": {"threads": None}}).run.threads is None
    with pytest.raises(ConfigError, match="run.threads"):
        cfgmod.from_dict({"run": {"threads": 0}})


@pytest.mark.parametrize(("env", "given", "want"), [
    ({"SLURM_CPUS_PER_TASK": "2"}, [], min(2, CORES)),  # the quick start leaves it unset
    ({}, [], 1),
    ({"SLURM_CPUS_PER_TASK": "2"}, ["run.threads=1"], 1),
])
def test_run_stores_the_effective_thread_count_in_the_resolved_config(
        tmp_path, monkeypatch, env, given, want):
    from fedmpi import run

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = argparse.Namespace(config=str(ROOT / "configs" / "quickstart.yaml"), overrides=given,
                              out=str(tmp_path / "q.h5"), overwrite=False, resume=None)
    cfg = run._plan(args, 3)["cfg"]
    assert cfg.run.threads == want
    assert json.loads(cfg.to_json())["run"]["threads"] == want  # what config_json holds
