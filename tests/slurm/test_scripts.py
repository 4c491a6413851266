"""Launch scripts without a cluster: syntax, GPU binding, the workstation command line, and
the batch scripts' decisions (run directly with bash, a fake launcher and fake Slurm
commands): what a signal means, when to requeue, the result file's status over the exit
status, finding the repository and the Python.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SCRIPTS = sorted([*ROOT.glob("jobs/**/*.sh"), *ROOT.glob("jobs/**/*.sbatch"),
                  ROOT / ".ci" / "slurm-up.sh", ROOT / ".ci" / "slurm-down.sh",
                  ROOT / "tests" / "slurm" / "probe.sbatch"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def bind(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CUDA_VISIBLE_DEVICES", "MPI_LOCALRANKID", "SLURM_LOCALID", "SLURM_NODEID",
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


def test_gpu_bind_on_a_node_without_the_server_gives_worker_w_gpu_w():
    """Issue 15: on the second node of a job (SLURM_NODEID=1) local rank 0 is a worker, and
    the rule (fedmpi/devices.py) puts worker w on GPU w; the old (L-1) mod G rotated it."""
    gpus = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    for var in ("MPI_LOCALRANKID", "SLURM_LOCALID"):
        got = [bind({**gpus, "SLURM_NODEID": "1", var: str(r)}) for r in range(3)]
        assert got == ["4", "5", "6"], var
        # the server's node (node 0): the server on the last GPU, workers from GPU 0
        got = [bind({**gpus, "SLURM_NODEID": "0", var: str(r)}) for r in range(4)]
        assert got == ["6", "4", "5", "6"], var


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
                                    "jobs/paper-rate.sh",
                                    "jobs/slurm/run.sbatch", "jobs/slurm/sweep.sbatch"])
def test_user_facing_scripts_are_executable(script):
    assert os.access(ROOT / script, os.X_OK), f"chmod +x {script}"



def launch_line(tmp_path, nodes: str, tasks: str, **env: str) -> subprocess.CompletedProcess:
    """fedmpi_launch_string 99 in a job on `nodes` ("n1,n2") with SLURM_TASKS_PER_NODE
    `tasks`, with a fake `scontrol show hostnames`."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text('#!/bin/sh\necho "$3" | tr , "\\n"\n')
    (fake / "scontrol").chmod(0o755)
    script = f"source {ROOT}/jobs/slurm/common.sh; fedmpi_launch_string 99"
    base = {"PATH": f"{fake}:{os.environ['PATH']}", "FEDMPI_DIR": str(ROOT), "GPU_BIND": "0",
            "SRUN_MPI": "pmi2", "SLURM_JOB_NODELIST": nodes, "SLURM_TASKS_PER_NODE": tasks,
            "SLURM_JOB_ID": "7", "TMPDIR": str(tmp_path), "python": sys.executable}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={**base, **env})


def test_server_alone_puts_rank_0_alone_on_the_first_node(tmp_path):
    res = launch_line(tmp_path, "a,b,c", "4(x3)", SERVER_NODE="alone", LAUNCHER="srun")
    assert res.returncode == 0, res.stderr
    assert "rank 0 alone on a; 8 workers on b c" in res.stderr
    words = res.stdout.split()
    assert words[:3] == ["env", "-u", "SLURM_NTASKS_PER_NODE"]
    assert words[3].startswith("SLURM_HOSTFILE=")
    assert words[4:] == ["srun", "--mpi=pmi2", "--distribution=arbitrary", "-n", "9"]
    hostfile = words[3].split("=", 1)[1]
    with open(hostfile) as f:
        assert f.read().split() == ["a"] + ["b"] * 4 + ["c"] * 4
    hydra = str(VENV / "bin" / "mpiexec")  # the mpich wheel's
    res = launch_line(tmp_path, "a,b", "2,3", SERVER_NODE="alone", LAUNCHER="mpiexec",
                      MPIEXEC=hydra)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [hydra, "-n", "4", "-hosts", "a:1,b:3"]
    if shutil.which("mpirun.openmpi"):  # Open MPI's spelling
        res = launch_line(tmp_path, "a,b", "2,3", SERVER_NODE="alone", LAUNCHER="mpiexec",
                          MPIEXEC="mpirun.openmpi")
        assert res.stdout.split() == ["mpirun.openmpi", "-n", "4", "--host", "a:1,b:3"]
    shared = launch_line(tmp_path, "a,b", "2(x2)", LAUNCHER="srun")
    assert shared.stdout.split() == ["srun", "--mpi=pmi2", "-n", "99"], shared.stderr


def test_server_alone_on_one_node_is_a_clear_error(tmp_path):
    res = launch_line(tmp_path, "a", "4", SERVER_NODE="alone", LAUNCHER="srun")
    assert res.returncode == 2 and "SERVER_NODE=alone needs an allocation of 2 or more nodes" \
        in res.stderr, res.stderr
    res = launch_line(tmp_path, "a,b", "4(x2)", SERVER_NODE="apart", LAUNCHER="srun")
    assert res.returncode == 2 and "SERVER_NODE must be shared or alone, got 'apart'" in res.stderr


# ------------------------------------------------------------------ batch scripts, no Slurm

# Stands in for `mpiexec -n N python -m fedmpi run ... --out F | --resume F`: writes the
# result file the way FAKE_MODE says, so the script's decision can be checked in seconds.
FAKE_LAUNCHER = textwrap.dedent("""\
    #!{python}
    import json, os, signal, sys, time
    import h5py
    args = sys.argv[1:]
    out = args[args.index("--out") + 1] if "--out" in args else args[args.index("--resume") + 1]
    mode = os.environ["FAKE_MODE"]
    log = open(os.environ["FAKE_LOG"], "a")
    t0 = time.monotonic()
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))

    def write(status, rounds, start="2026-01-01T00:00:00"):
        with h5py.File(out, "a") as f:
            prev = int(f.attrs.get("completed_rounds", 0))
            f.attrs.update(status=status, completed_rounds=prev + rounds, start_time=start)
            if "--out" in args:  # the resolved config, as `fedmpi run` stores it
                from fedmpi import config
                f.attrs["config_json"] = config.load(args[args.index("run") + 1])[0].to_json()

    print("argv", json.dumps(args), file=log, flush=True)
    if mode == "complete-then-fail":   # every round done, then the launcher fails in teardown
        write("completed", 5); sys.exit(15)
    if mode == "fail-exit-0":          # a failed run whose launcher still says 0
        write("failed", 1); sys.exit(0)
    if mode in ("stop-on-signal", "stop-on-signal-no-round"):
        write("running", 0)
        print("ready", file=log, flush=True)
        deadline = time.monotonic() + float(os.environ.get("FAKE_WAIT", "60"))
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        if not got:
            write("completed", 5); sys.exit(0)
        print(f"signal {{signal.Signals(got[0]).name}} after {{time.monotonic() - t0:.1f}}",
              file=log, flush=True)
        write("interrupted", 0 if mode.endswith("no-round") else 2); sys.exit(75)
    sys.exit(f"unknown FAKE_MODE {{mode}}")
""")


@pytest.fixture
def batch(tmp_path):
    """Run jobs/slurm/*.sbatch with bash as Slurm would, with fakes for mpiexec/scontrol/squeue."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "slurm-calls"
    (fake / "scontrol").write_text(
        f"#!/bin/sh\necho \"scontrol $*\" >> {calls}\n"
        'if [ "$1 $2" = "show job" ] && [ -n "$FAKE_COMMAND" ]; then\n'
        '  echo "JobId=$4 JobName=x Command=$FAKE_COMMAND WorkDir=/tmp"\nfi\n')
    (fake / "squeue").write_text(f"#!/bin/sh\necho \"squeue $*\" >> {calls}\n"
                                 'echo "${FAKE_TIME_LEFT:-UNLIMITED}"\n')
    (fake / "mpiexec").write_text(FAKE_LAUNCHER.format(python=sys.executable))
    for f in fake.iterdir():
        f.chmod(0o755)

    class Batch:
        tmp = tmp_path
        log = tmp_path / "launcher-log"
        results = tmp_path / "results"

        def env(self, **extra):
            base = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "FEDMPI_", "FAKE_"))
                    and k not in ("VENV", "LAUNCHER", "MPIEXEC", "RESULTS_DIR", "REQUEUE")}
            return {**base, "PATH": f"{fake}:{os.environ['PATH']}", "FEDMPI_DIR": str(ROOT),
                    "VENV": str(VENV), "LAUNCHER": "mpiexec", "MPIEXEC": str(fake / "mpiexec"),
                    "GPU_BIND": "0", "RESULTS_DIR": str(self.results), "SLURM_JOB_ID": "4242",
                    "SLURM_NTASKS": "3", "SLURM_SUBMIT_DIR": str(tmp_path),
                    "FAKE_LOG": str(self.log), "FEDMPI_SETTLE_S": "2", **extra}

        def start(self, script="run.sbatch", *args, cwd=None, **env):
            script_path = script if os.path.isabs(script) else ROOT / "jobs" / "slurm" / script
            return subprocess.Popen(["bash", str(script_path), *map(str, args)],
                                    cwd=cwd or tmp_path, env=self.env(**env), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def run(self, *args, **env):
            proc = self.start(*args, **env)
            out, err = proc.communicate(timeout=120)
            return proc.returncode, out + err

        def wait_ready(self, proc):
            deadline = time.monotonic() + 60
            while "ready" not in (self.log.read_text() if self.log.exists() else ""):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)

        def calls(self):
            return calls.read_text() if calls.exists() else ""

        def status(self, path):
            import h5py

            with h5py.File(path, "r") as f:
                return str(f.attrs["status"]), int(f.attrs["completed_rounds"])

    return Batch()


QUICK = "configs/quickstart.yaml"


def test_a_completed_run_whose_launcher_fails_in_teardown_is_a_success(batch):
    rc, log = batch.run("run.sbatch", QUICK, FAKE_MODE="complete-then-fail")
    assert rc == 0, log
    assert "launcher exited 15 afterwards (teardown)" in log
    assert batch.status(batch.results / "quickstart-4242.h5") == ("completed", 5)


def test_a_failed_file_is_a_failure_even_if_the_launcher_says_0(batch):
    rc, log = batch.run("run.sbatch", QUICK, FAKE_MODE="fail-exit-0")
    assert rc == 1, log
    assert "result file: failed" in log and "requeue" not in batch.calls()
    # a failed file keeps every completed round: the log says how to go on (issue 15)
    assert "resumable by hand" in log and "resume by hand: sbatch" in log, log


def test_the_srun_launch_leaves_a_dead_rank_to_fedmpi():
    """Issue 15: with --kill-on-bad-exit a rank killed on one node made srun end the step
    at once (the file left `running`, no reason); fedmpi's liveness rule must decide."""
    script = (f"GPU_BIND=1 LAUNCHER=srun SRUN_MPI=pmi2 FEDMPI_DIR={ROOT}; "
              f"source {ROOT}/jobs/slurm/common.sh; fedmpi_launch_string 4")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:4] == ["srun", "--mpi=pmi2", "-n", "4"], res.stdout
    assert "kill-on-bad-exit" not in res.stdout and "gpu-bind.sh" in res.stdout


def test_sigterm_stops_for_good_without_requeue(batch):
    """What `scancel JOBID` sends the batch shell: a cancel must not requeue itself."""
    proc = batch.start("run.sbatch", QUICK, FAKE_MODE="stop-on-signal")
    batch.wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, out + err
    assert "requeue" not in batch.calls()
    assert "stopped for good by SIGTERM" in err and "resume by hand" in err
    assert f"run.sbatch --resume {batch.results}/quickstart-4242.h5" in err
    assert "signal SIGUSR1" in batch.log.read_text()  # the run was told to checkpoint
    assert batch.status(batch.results / "quickstart-4242.h5") == ("interrupted", 2)


def test_sigusr1_after_a_round_requeues(batch):
    proc = batch.start("run.sbatch", QUICK, FAKE_MODE="stop-on-signal")
    batch.wait_ready(proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "scontrol requeue 4242" in batch.calls()
    assert "requeueing job 4242" in err


def test_sigusr1_without_a_completed_round_does_not_requeue(batch):
    """Each requeue must make progress: a stop before any round would loop forever."""
    proc = batch.start("run.sbatch", QUICK, FAKE_MODE="stop-on-signal-no-round")
    batch.wait_ready(proc)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, out + err
    assert "requeue" not in batch.calls()
    assert "it would loop" in err


def test_the_time_warning_is_derived_from_a_short_time_limit(batch):
    """--time of 8 s: a fixed 300 s margin would stop at once; a quarter of it (2 s) is used."""
    proc = batch.start("run.sbatch", QUICK, FAKE_MODE="stop-on-signal", FAKE_TIME_LEFT="0:08",
                       FAKE_WAIT="30")
    out, err = proc.communicate(timeout=60)
    assert "stopping to requeue 2s before the limit" in err, err
    launched = batch.log.read_text()
    got = re.search(r"signal SIGUSR1 after ([0-9.]+)", launched)
    assert got, launched + err
    assert 3.0 <= float(got.group(1)) <= 20.0  # about 6 s after the start, not at once
    assert proc.returncode == 0 and "scontrol requeue 4242" in batch.calls()


@pytest.mark.parametrize(("left", "margin", "want"), [
    (7200, 300, 300), (1200, 300, 300), (300, 300, 75), (60, 300, 15), (60, 5, 5)])
def test_stop_margin_is_capped_at_a_quarter_of_the_time_left(left, margin, want):
    res = subprocess.run(["bash", "-c", f"source {ROOT}/jobs/slurm/common.sh; "
                          f"fedmpi_stop_margin {left} {margin}"],
                         capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() == str(want), res.stderr


@pytest.mark.parametrize(("text", "want"), [
    ("UNLIMITED", ""), ("NOT_SET", ""), ("1:00", "60"), ("0:58", "58"),
    ("2:03:04", "7384"), ("1-00:00:01", "86401"), ("08:09", "489")])
def test_slurm_durations_parse(text, want):
    res = subprocess.run(["bash", "-c", f"source {ROOT}/jobs/slurm/common.sh; "
                          f"fedmpi_seconds '{text}'"], capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() == want, res.stderr


def test_a_bad_stop_margin_is_refused_before_launching(batch):
    rc, log = batch.run("run.sbatch", QUICK, STOP_MARGIN="5min", FAKE_MODE="fail-exit-0",
                        FAKE_TIME_LEFT="1:00:00")
    assert rc == 2 and "STOP_MARGIN must be a number of seconds, got '5min'" in log, log
    assert not batch.log.exists()


def test_a_missing_venv_is_one_clear_line_and_exit_2(batch):
    rc, log = batch.run("run.sbatch", QUICK, VENV="/nonexistent", FAKE_MODE="fail-exit-0")
    assert rc == 2, log
    assert "VENV=/nonexistent has no bin/python: set VENV" in log
    assert "Traceback" not in log and not batch.log.exists()  # nothing launched
    assert len(log.strip().splitlines()) == 1, log


def test_a_python_without_mpi4py_is_one_clear_line_and_exit_2(batch, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module "
                                         "named 'mpi4py'\" >&2\nexit 1\n")
    (venv / "bin" / "python").chmod(0o755)
    rc, log = batch.run("run.sbatch", QUICK, VENV=str(venv), FAKE_MODE="fail-exit-0")
    assert rc == 2, log
    assert "cannot import fedmpi and mpi4py (ModuleNotFoundError: No module named 'mpi4py')" in log
    assert "set VENV=" in log and len(log.strip().splitlines()) == 1, log


def test_submitted_from_another_folder_finds_the_repository_and_the_config(batch, tmp_path):
    """Slurm runs a copy of the script from its spool folder, in the submit folder."""
    spool = tmp_path / "spool" / "job04242"
    spool.mkdir(parents=True)
    copy = spool / "slurm_script"
    copy.write_text((ROOT / "jobs" / "slurm" / "run.sbatch").read_text())
    submit = tmp_path / "elsewhere"
    (submit / "cfg").mkdir(parents=True)
    (submit / "cfg" / "mine.yaml").write_text((ROOT / QUICK).read_text())
    env = {"FEDMPI_DIR": "", "SLURM_SUBMIT_DIR": str(submit), "FAKE_MODE": "complete-then-fail",
           "FAKE_COMMAND": str(ROOT / "jobs" / "slurm" / "run.sbatch")}
    proc = batch.start(str(copy), "cfg/mine.yaml", cwd=submit, **env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert f"fedmpi from {ROOT}/fedmpi/__init__.py" in err  # and which fedmpi it imports
    assert f'"{submit}/cfg/mine.yaml"' in batch.log.read_text()  # relative to the submit dir
    assert (batch.results / "mine-4242.h5").is_file()


def test_without_a_repository_the_error_says_to_set_fedmpi_dir(batch, tmp_path):
    copy = tmp_path / "slurm_script"
    copy.write_text((ROOT / "jobs" / "slurm" / "run.sbatch").read_text())
    proc = batch.start(str(copy), QUICK, FEDMPI_DIR="", FAKE_MODE="fail-exit-0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "cannot find the fedmpi repository" in err and "FEDMPI_DIR=/path/to/fedmpi" in err
    assert "No such file" not in err and "command not found" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_resume_by_hand_continues_the_given_file(batch, tmp_path):
    import h5py

    h5 = tmp_path / "old" / "quickstart-17.h5"  # what a cancelled job 17 left
    h5.parent.mkdir()
    with h5py.File(h5, "w") as f:
        f.attrs.update(status="interrupted", completed_rounds=3, start_time="t0")
    rc, log = batch.run("run.sbatch", "--resume", "old/quickstart-17.h5",
                        FAKE_MODE="complete-then-fail", SLURM_JOB_ID="99")
    assert rc == 0, log
    assert f'"--resume", "{h5}"]' in batch.log.read_text()
    assert batch.status(h5) == ("completed", 8)
    rc, log = batch.run("run.sbatch", "--resume", "old/nope.h5", FAKE_MODE="fail-exit-0")
    assert rc == 2 and "no such result file" in log


def test_sweep_task_completed_with_failing_teardown_is_a_success(batch, tmp_path):
    import yaml

    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "base": str(ROOT / QUICK), "seeds": [0, 1]}))
    rc, log = batch.run("sweep.sbatch", sweep, FAKE_MODE="complete-then-fail",
                        SLURM_ARRAY_TASK_ID="1")
    assert rc == 0, log
    assert batch.status(batch.results / "s" / "seed=1.h5") == ("completed", 5)
    assert "launcher exited 15 afterwards" in log
    # the sweep file changed since: the completed file is stale, refused with exit 2
    sweep.write_text(yaml.safe_dump({"name": "s", "base": str(ROOT / QUICK), "seeds": [0, 1],
                                     "set": {"rounds": 11}}))
    rc, log = batch.run("sweep.sbatch", sweep, FAKE_MODE="complete-then-fail",
                        SLURM_ARRAY_TASK_ID="1")
    assert rc == 2, log
    assert "rounds: file 10, sweep 11" in log


SETTINGS = ("VENV", "LAUNCHER", "SRUN_MPI", "MPIEXEC", "MPIEXEC_ARGS", "GPU_BIND",
            "RESULTS_DIR", "REQUEUE", "STOP_MARGIN")


@pytest.mark.parametrize("script", ["run.sbatch", "sweep.sbatch"])
def test_shell_settings_live_in_one_shared_file(script):
    text = (ROOT / "jobs" / "slurm" / script).read_text()
    shared = (ROOT / "jobs" / "slurm" / "settings.sh").read_text()
    assert 'source "$FEDMPI_DIR/jobs/slurm/settings.sh"' in text
    for name in SETTINGS:
        assert re.search(rf"^{name}=", shared, re.M), f"{name} missing from settings.sh"
        assert not re.search(rf"^{name}=", text, re.M), f"{script} sets {name}: move it to settings.sh"
    # the time warning comes from the script (derived from --time), never a fixed margin
    assert not re.search(r"^#SBATCH\s+--signal", text, re.M)
    # Slurm opens --output before the script runs: the default must need no folder
    (output,) = re.findall(r"^#SBATCH\s+--output=(\S+)", text, re.M)
    assert "/" not in output
