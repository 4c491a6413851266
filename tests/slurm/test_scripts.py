"""Launch scripts without a cluster: syntax, GPU binding, the workstation command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("jobs/**/*.sh"), *ROOT.glob("jobs/**/*.sbatch"),
                  ROOT / ".ci" / "slurm-up.sh", ROOT / ".ci" / "slurm-down.sh"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def bind(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CUDA_VISIBLE_DEVICES", "MPI_LOCALRANKID", "SLURM_LOCALID",
                          "OMPI_COMM_WORLD_LOCAL_RANK")}
    res = subprocess.run(["bash", str(ROOT / "jobs" / "gpu-bind.sh"), "bash", "-c",
                          'echo "${CUDA_VISIBLE_DEVICES-unset}"'],
                         env={**clean, **env}, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_gpu_bind_gives_worker_k_gpu_k_minus_1():
    gpus = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert [bind({**gpus, "MPI_LOCALRANKID": str(r)}) for r in range(4)] == ["5", "4", "5", "4"]
    assert bind({**gpus, "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == "4"
    assert bind({**gpus, "SLURM_LOCALID": "2"}) == "5"
    # mpiexec inside a batch job: the ranks inherit SLURM_LOCALID=0; hydra's id wins.
    assert bind({**gpus, "SLURM_LOCALID": "0", "MPI_LOCALRANKID": "2"}) == "5"
    assert bind({**gpus, "MPI_LOCALRANKID": "1", "FEDMPI_GPU_BIND": "0"}) == "4,5"


def test_gpu_bind_without_gpus_changes_nothing(tmp_path):
    # a fake nvidia-smi that lists no GPU, first on PATH
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    path = f"{tmp_path}:{os.environ['PATH']}"
    assert bind({"MPI_LOCALRANKID": "1", "PATH": path}) == "unset"


def test_workstation_builds_the_mpiexec_command(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "MPIEXEC": str(fake), "FEDMPI_GPU_BIND": "0"}
    res = subprocess.run(["bash", str(ROOT / "jobs" / "workstation.sh"), "configs/quickstart.yaml",
                          "-n", "4", "--set", "rounds=2"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    args = res.stdout.split("\n")
    assert args[:2] == ["-n", "4"]
    assert args[2].endswith("python") or "python" in args[2]
    assert args[3:-1] == ["-m", "fedmpi", "run", "configs/quickstart.yaml", "--set", "rounds=2"]


def test_workstation_rejects_one_rank():
    res = subprocess.run(["bash", str(ROOT / "jobs" / "workstation.sh"), "c.yaml", "-n", "1"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and ">= 2" in res.stderr


@pytest.mark.parametrize("script", ["jobs/workstation.sh", "jobs/gpu-bind.sh", "jobs/gpu-check.sh",
                                    "jobs/slurm/run.sbatch", "jobs/slurm/sweep.sbatch"])
def test_user_facing_scripts_are_executable(script):
    assert os.access(ROOT / script, os.X_OK), f"chmod +x {script}"
