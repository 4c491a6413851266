"""The job scripts on a real two-node Slurm (.ci/slurm-up.sh: nodes n1 and n2 in their own
network, UTS and IPC namespaces, so ranks on different nodes talk over TCP).

1. `sbatch -N 2 --ntasks=4 --ntasks-per-node=2` puts the server and one worker on the
   first node and two workers on the second; with srun and with mpiexec (hydra
   bootstrapped through Slurm, no ssh) the run completes with exact byte accounting,
   `hosts` naming both nodes, and the same bytes and accuracy as the same four ranks on
   one node (shared memory);
2. the node-local rank and the GPU of every rank are right on each node (GPUs simulated
   through CUDA_VISIBLE_DEVICES, as Slurm's --gpus-per-node sets it), for both launchers,
   with and without jobs/gpu-bind.sh;
3. a job stopped by the warning signal (SIGUSR1) requeues and resumes across both nodes
   to exactly the uninterrupted run's result;
4. the worker ranks of the second node killed: the job ends within the liveness limit,
   the file `failed` naming the silent rank, and `--resume` completes it;
5. a sweep array whose tasks run on different nodes;
6. SERVER_NODE=alone: rank 0 alone on the first node, the workers packed on the others;
7. jobs/slurm/bench-transport.sbatch measures the network path across the two nodes and
   the shared-memory path within one, each named in its table's header.

Skipped with a message where the cluster has fewer than two nodes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml
from slurm_helpers import (
    DONE_STATES,
    QUICK,
    QUICK_SET,
    ROOT,
    ROUNDS,
    Jobs,
    completed_rounds,
    h5_attrs,
    h5_rounds,
    job_records,
)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.timeout(900)]

JOB_TIMEOUT = 420
# server + 1 worker on the first node, 2 workers on the second (--ntasks: the scripts'
# own #SBATCH --ntasks=3 would win otherwise)
SPAN = ("--nodes=2", "--ntasks=4", "--ntasks-per-node=2")
PROBE = ROOT / "tests" / "slurm" / "probe.sbatch"
ALONE = ("--nodes=2", "--ntasks=6", "--ntasks-per-node=3")  # 1 + 3 ranks with SERVER_NODE=alone
BENCH = ("--max-size", "65536", "--repeat", "1")  # bench-transport.sbatch, a few seconds
KILLED_TIMEOUT_S = 45  # run.timeout_s of the killed job: start-up on a loaded machine fits


@pytest.fixture(scope="session")
def nodes(cluster) -> list[str]:
    """The two nodes' names (first = where rank 0 runs), or a skip naming what is missing."""
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True,
                         timeout=30)
    usable = sorted({line.split()[0] for line in res.stdout.splitlines()
                     if line.split()[1].rstrip("*~#") in ("idle", "mix", "alloc")})
    if len(usable) < 2:
        pytest.skip(f"multi-node tests need a Slurm with two nodes (sinfo: {res.stdout.strip()}); "
                    "`bash .ci/slurm-up.sh` starts n1 and n2 (FEDMPI_SLURM_NODES=1: one node)")
    return usable[:2]


def span_opts(nodes: list[str]) -> tuple[str, ...]:
    return (*SPAN, f"--nodelist={','.join(nodes)}")


@pytest.fixture(scope="module")
def runs(nodes, tmp_path_factory):
    """Every job of this module, submitted at once and driven together (the waits -- the
    requeue hold, the liveness limit -- overlap the other jobs' work; about 3 minutes on
    2 cores instead of 6 one after the other):
      sweep       a 2-task array, --exclusive (first, so that its tasks get a node each);
      srun, mpiexec, one-node   complete 4-rank runs, across the nodes / on one node;
      probe, probe-alone        node_probe.py under both launchers, shared / alone;
      alone       a run with SERVER_NODE=alone;
      requeued    stopped with SIGUSR1 after its first round: requeues, resumes;
      killed      its ranks on the second node killed after round 2, then `resumed` by hand.
    Returns the job ids, final records, result paths, logs and what the driver saw."""
    jobs = Jobs(tmp_path_factory.mktemp("multinode"))
    (jobs.tmp / "alone").mkdir()
    sweep = jobs.tmp / "nodes.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "nodes", "base": str(QUICK),
        "set": {"rounds": 2, "clients.num_clients": 6, "train.local_epochs": 1},
        "seeds": [0, 1]}))
    span, alone = span_opts(nodes), ALONE + (f"--nodelist={','.join(nodes)}",)
    try:
        ids = {"sweep": jobs.submit("sweep.sbatch", sweep,
                                    sbatch_opts=("--array=0-1", "--exclusive", "--nodes=1"))}
        ids.update({  # the longest chains first: kill -> liveness -> resume; stop -> requeue
            "requeued": jobs.submit("run.sbatch", QUICK, *QUICK_SET, sbatch_opts=span,
                                    RUN_NAME="requeued", LAUNCHER="srun"),
            "killed": jobs.submit("run.sbatch", QUICK, *QUICK_SET, "--set",
                                  f"run.timeout_s={KILLED_TIMEOUT_S}", sbatch_opts=span,
                                  RUN_NAME="killed", LAUNCHER="srun"),
            "srun": jobs.submit("run.sbatch", QUICK, *QUICK_SET, sbatch_opts=span,
                                RUN_NAME="srun", LAUNCHER="srun"),
            "mpiexec": jobs.submit("run.sbatch", QUICK, *QUICK_SET, sbatch_opts=span,
                                   RUN_NAME="mpiexec", LAUNCHER="mpiexec"),
            "one-node": jobs.submit("run.sbatch", QUICK, *QUICK_SET,
                                    sbatch_opts=("--nodes=1", "--ntasks=4"), RUN_NAME="one-node"),
            "probe": jobs.submit(str(PROBE), jobs.tmp, sbatch_opts=span,
                                 CUDA_VISIBLE_DEVICES="0,1"),
            "alone": jobs.submit("run.sbatch", QUICK, "--set", "rounds=2", sbatch_opts=alone,
                                 RUN_NAME="alone", SERVER_NODE="alone", LAUNCHER="mpiexec"),
            "probe-alone": jobs.submit(str(PROBE), jobs.tmp / "alone", sbatch_opts=alone,
                                       SERVER_NODE="alone", CUDA_VISIBLE_DEVICES="0,1,2"),
            "bench-network": jobs.submit("bench-transport.sbatch", *BENCH, sbatch_opts=(
                "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", f"--nodelist={','.join(nodes)}")),
            "bench-shm": jobs.submit("bench-transport.sbatch", *BENCH, sbatch_opts=(
                "--nodes=1", "--ntasks=2", f"--nodelist={nodes[1]}")),
        })
        out = {k: jobs.tmp / "results" / f"{k}-{v}.h5" for k, v in ids.items()}
        seen: dict = {}
        records: dict = {}
        deadline = time.monotonic() + 2 * JOB_TIMEOUT
        while len(records) < len(ids):
            assert time.monotonic() < deadline, f"jobs not done: {set(ids) - set(records)}\n" \
                + jobs.logs()
            drive(jobs, ids, out, seen, nodes)
            for name, job_id in list(ids.items()):
                if name in records:
                    continue
                recs = job_records(job_id)
                n = 2 if name == "sweep" else 1
                if len(recs) >= n and all(r.get("JobState") in DONE_STATES for r in recs):
                    records[name] = recs if name == "sweep" else recs[0]
                    if name == "killed":  # resume the failed file by hand
                        seen["killed_took"] = time.monotonic() - seen.get("kill_at", 0)
                        seen["killed_attrs"] = h5_attrs(out["killed"])
                        ids["resumed"] = jobs.submit("run.sbatch", "--resume", out["killed"],
                                                     sbatch_opts=span)
            time.sleep(0.5)
        yield {"jobs": jobs, "ids": ids, "records": records, "out": out, "seen": seen,
               "logs": jobs.logs()}
    finally:
        jobs.cancel_all()


def drive(jobs: Jobs, ids: dict, out: dict, seen: dict, nodes: list[str]) -> None:
    """One step of the interventions: SIGUSR1 once `requeued` completed a round (and the
    file's state while the job waits to restart); SIGKILL to `killed`'s ranks on the second
    node once it completed 2 rounds."""
    if "usr1" not in seen and completed_rounds(out["requeued"]) >= 1:
        sig = subprocess.run(["scancel", "--signal=USR1", "--batch", ids["requeued"]],
                             capture_output=True, text=True, timeout=30)
        assert sig.returncode == 0, sig.stderr
        seen["usr1"] = True
    if "usr1" in seen and "requeue_attrs" not in seen:
        rec = job_records(ids["requeued"])
        if rec and int(rec[0].get("Restarts", 0)) >= 1 and rec[0]["JobState"] == "PENDING":
            seen["requeue_attrs"] = h5_attrs(out["requeued"])  # held cred_expire+1 s: time to read
    if "kill_at" not in seen and completed_rounds(out["killed"]) >= 2:
        if not os.path.exists(f"/run/slurm/slurmd-{nodes[1]}.pid"):
            seen["kill_at"], seen["no_kill"] = time.monotonic(), "not .ci/slurm-up.sh's cluster"
            return
        pids = rank_pids(ids["killed"], nodes[1])
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        seen["kill_at"], seen["killed_pids"] = time.monotonic(), pids


def check_accounting(out, world: int, incarnations: int = 1, stopped: tuple = ()) -> None:
    """The file's byte accounting: every message counted alike by sender and receiver,
    per-round totals equal to the messages, every worker in every round, the total on the
    wire equal to every message; each incarnation of the run (a resume) logs its workers'
    hellos. In a round where an incarnation stopped, /messages also holds that
    incarnation's stop messages, which the redone round's row does not count."""
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
    from fedmpi.wire import Kind

    np.testing.assert_array_equal(m["sender_bytes"], m["receiver_bytes"])
    assert (m["round"] == -1).sum() == (world - 1) * incarnations  # a hello per worker
    for i, rnd in enumerate(r["round"]):
        rows = m["round"] == rnd
        upd = rows & (m["kind"] == Kind.UPDATE)
        mod = rows & (m["kind"] == Kind.MODEL)
        assert r["up_bytes"][i] == m["sender_bytes"][upd].sum() > 0
        assert r["down_bytes"][i] == m["sender_bytes"][mod].sum() > 0
        control = m["sender_bytes"][rows & ~upd & ~mod].sum()
        if rnd in stopped:
            assert r["control_bytes"][i] <= control, rnd
        else:
            assert r["control_bytes"][i] == control, rnd
        assert set(m["worker"][upd].tolist()) == set(range(1, world)), rnd
    assert r["cum_wire_bytes"][-1] == m["sender_bytes"][m["round"] <= r["round"][-1]].sum()


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_a_run_spans_both_nodes_with_exact_byte_accounting(runs, nodes, launcher):
    out, record, jobs = runs["out"][launcher], runs["records"][launcher], runs["jobs"]
    assert record["JobState"] == "COMPLETED", jobs.logs()
    a = h5_attrs(out)
    assert a["status"] == "completed" and int(a["completed_rounds"]) == ROUNDS
    first, second = nodes
    assert json.loads(a["hosts"]) == [first, first, second, second]
    assert json.loads(a["devices"]) == ["cpu"] * 4
    check_accounting(out, 4)


def test_placement_does_not_change_the_result(runs):
    """TCP between two nodes (srun, mpiexec) and shared memory on one node: the same four
    ranks give bit-identical rounds and the same bytes on the wire."""
    one = runs["out"]["one-node"]
    assert runs["records"]["one-node"]["JobState"] == "COMPLETED", runs["jobs"].logs()
    assert len(set(json.loads(h5_attrs(one)["hosts"]))) == 1
    want = h5_rounds(one)
    for launcher in ("srun", "mpiexec"):
        got = h5_rounds(runs["out"][launcher])
        for col in ("round", "test_accuracy", "test_loss", "up_bytes", "down_bytes",
                    "control_bytes"):
            np.testing.assert_array_equal(got[col], want[col], err_msg=f"{launcher}: {col}")


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_node_local_rank_and_gpu_are_right_on_each_node(runs, nodes, launcher):
    """Every node sees GPUs 0,1 (as --gpus-per-node=2 sets it). The rule (fedmpi/devices.py):
    worker w of a node on GPU w, the server on its node's last GPU -- the same with every
    rank seeing both GPUs (fedmpi picks) and with jobs/gpu-bind.sh giving each one GPU."""
    assert runs["records"]["probe"]["JobState"] == "COMPLETED", runs["jobs"].logs()
    first, second = nodes
    for bind in (0, 1):
        ranks = json.loads((runs["jobs"].tmp / f"{launcher}-bind{bind}.json").read_text())
        where = f"{launcher}, GPU_BIND={bind}: {ranks}"
        assert [r["host"] for r in ranks] == [first, first, second, second], where
        assert [r["proc"] for r in ranks] == [first, first, second, second], where
        assert [(r["local_rank"], r["local_size"], r["server_here"]) for r in ranks] == \
            [(0, 2, True), (1, 2, True), (0, 2, False), (1, 2, False)], where
        assert [r["gpu"] for r in ranks] == ["1", "0", "0", "1"], where
        if bind:  # one GPU each, trusted by fedmpi as cuda:0
            assert [r["visible"] for r in ranks] == ["1", "0", "0", "1"], where
            assert {r["device"] for r in ranks} == {"cuda:0"}, where
        else:
            assert [r["device"] for r in ranks] == ["cuda:1", "cuda:0", "cuda:0", "cuda:1"], where
        if launcher == "mpiexec":  # hydra's node-local rank, not the inherited SLURM_LOCALID
            assert [r["MPI_LOCALRANKID"] for r in ranks] == ["0", "1", "0", "1"], where
            # hydra bootstrapped through Slurm: its proxy on each node started by slurmstepd
            for r in ranks:
                assert r["started_by"][:2] == ["hydra_pmi_proxy", "slurmstepd"], where
        else:
            assert all(r["started_by"][0] == "slurmstepd" for r in ranks), where


def test_usr1_requeues_and_resumes_across_both_nodes_bit_identically(runs, nodes):
    seen, logs = runs["seen"], runs["logs"]
    record, out = runs["records"]["requeued"], runs["out"]["requeued"]
    assert "usr1" in seen and "requeue_attrs" in seen, logs
    a = seen["requeue_attrs"]
    assert a["status"] == "interrupted" and 1 <= int(a["completed_rounds"]) < ROUNDS, logs
    stopped_at = int(a["completed_rounds"])
    assert record["JobState"] == "COMPLETED" and int(record["Restarts"]) == 1, logs
    assert f"requeueing job {runs['ids']['requeued']}" in logs
    assert f"fedmpi-job {runs['ids']['requeued']}] restart 1 on {nodes[0]}" in logs
    a = h5_attrs(out)
    assert a["status"] == "completed" and int(a["completed_rounds"]) == ROUNDS
    assert json.loads(a["hosts"]) == [nodes[0], nodes[0], nodes[1], nodes[1]]
    got, want = h5_rounds(out), h5_rounds(runs["out"]["srun"])
    for col in ("round", "test_accuracy", "test_loss", "up_bytes", "down_bytes"):
        np.testing.assert_array_equal(got[col], want[col], err_msg=col)
    check_accounting(out, 4, incarnations=2, stopped=(stopped_at,))


def rank_pids(job_id: str, node: str) -> list[int]:
    """Process ids of the job's `fedmpi run` ranks on `node`: the processes in that node's
    UTS namespace (its slurmd's) whose environment carries the job's id."""
    with open(f"/run/slurm/slurmd-{node}.pid") as f:  # written by .ci/slurm-up.sh's slurmd
        uts = os.readlink(f"/proc/{f.read().strip()}/ns/uts")
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{d}/ns/uts") != uts:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and cmd[0].endswith(b"python") \
                and b"fedmpi" in cmd and b"run" in cmd:
            found.append(int(d))
    return found


def test_killed_ranks_on_the_second_node_fail_the_job_within_the_liveness_limit(runs, nodes):
    seen, logs = runs["seen"], runs["logs"]
    if "no_kill" in seen:
        pytest.skip(f"ranks not killed: {seen['no_kill']} (no /run/slurm/slurmd-NODE.pid)")
    assert len(seen.get("killed_pids", [])) == 2, logs  # the two worker ranks on nodes[1]
    assert runs["records"]["killed"]["JobState"] == "FAILED", logs
    a = seen["killed_attrs"]
    assert a["status"] == "failed", logs
    stopped_at = int(a["completed_rounds"])
    assert 2 <= stopped_at < ROUNDS
    # rank 0 names the silent rank(s) of n2 (ranks 2 and 3): "from rank 3", or, while it
    # receives from any rank (the reorder window), "from rank(s) 2, 3"
    m = re.search(rf"fedmpi: rank 0 failed: LivenessError: rank 0: no \w+ .*from "
                  rf"rank(?:\(s\))? ([23](?:, [23])?) in "
                  rf"round {stopped_at} within (\d+) s \(liveness limit: max\(run.timeout_s "
                  rf"{KILLED_TIMEOUT_S} s, 10 x slowest round ([\d.]+) s\)\)", logs)
    assert m, logs
    limit = max(KILLED_TIMEOUT_S, 10 * float(m.group(3)))
    # the limit, plus the poll before the kill and Slurm's end of the job
    assert seen["killed_took"] < limit + 60, (seen["killed_took"], limit, logs)
    assert f"resume by hand: sbatch {ROOT}/jobs/slurm/run.sbatch --resume {runs['out']['killed']}" \
        in logs

    assert runs["records"]["resumed"]["JobState"] == "COMPLETED", logs
    a = h5_attrs(runs["out"]["killed"])
    assert a["status"] == "completed" and int(a["completed_rounds"]) == ROUNDS, logs
    assert json.loads(a["hosts"]) == [nodes[0], nodes[0], nodes[1], nodes[1]]
    got, want = h5_rounds(runs["out"]["killed"]), h5_rounds(runs["out"]["srun"])
    for col in ("round", "test_accuracy", "up_bytes", "down_bytes"):
        np.testing.assert_array_equal(got[col], want[col], err_msg=col)
    check_accounting(runs["out"]["killed"], 4, incarnations=2, stopped=(stopped_at,))


def test_a_sweep_array_runs_its_tasks_on_different_nodes(runs, nodes):
    records, logs = runs["records"]["sweep"], runs["logs"]
    assert [r["JobState"] for r in records] == ["COMPLETED"] * 2, logs
    # --exclusive: a node per task, both at once
    assert sorted(r["NodeList"] for r in records) == nodes, records
    hosts = []
    for seed in (0, 1):
        a = h5_attrs(runs["jobs"].tmp / "results" / "nodes" / f"seed={seed}.h5")
        assert a["status"] == "completed" and int(a["completed_rounds"]) == 2
        assert len(set(json.loads(a["hosts"]))) == 1  # 3 ranks: one node
        hosts.append(json.loads(a["hosts"])[0])
    assert sorted(hosts) == nodes, hosts


def test_server_alone_on_the_first_node_and_workers_packed(runs, nodes):
    """SERVER_NODE=alone with `sbatch -N 2 --ntasks-per-node=3`: rank 0 alone on the first
    node (its GPUs and memory for the evaluation), 3 workers on the second."""
    record, jobs = runs["records"]["alone"], runs["jobs"]
    logs = jobs.logs()
    assert record["JobState"] == "COMPLETED", logs
    a = h5_attrs(runs["out"]["alone"])
    assert a["status"] == "completed", logs
    assert json.loads(a["hosts"]) == [nodes[0], nodes[1], nodes[1], nodes[1]], logs
    assert f"rank 0 alone on {nodes[0]}; 3 workers on {nodes[1]}" in logs
    check_accounting(runs["out"]["alone"], 4)


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_server_alone_ranks_and_gpus(runs, nodes, launcher):
    """The probe under SERVER_NODE=alone, 3 GPUs per node: the server on the first node's
    last GPU, workers 0..2 of the second node on GPUs 0..2 with jobs/gpu-bind.sh (both
    launchers) and without it (mpiexec: hydra reports the node layout; srun's arbitrary
    distribution gives MPICH no process map, so every rank looks alone on its node:
    GPU_BIND=1, the default, is what binds them right)."""
    assert runs["records"]["probe-alone"]["JobState"] == "COMPLETED", runs["jobs"].logs()
    first, second = nodes
    for bind in (0, 1):
        ranks = json.loads((runs["jobs"].tmp / "alone" / f"{launcher}-bind{bind}.json").read_text())
        where = f"{launcher}, GPU_BIND={bind}: {ranks}"
        assert [r["host"] for r in ranks] == [first, second, second, second], where
        assert ranks[0]["server_here"] and ranks[0]["local_size"] == 1, where
        if launcher == "srun" and not bind:
            continue  # see the docstring
        if launcher == "mpiexec":
            assert [(r["local_rank"], r["local_size"]) for r in ranks[1:]] == \
                [(0, 3), (1, 3), (2, 3)], where
        assert [r["gpu"] for r in ranks] == ["2", "0", "1", "2"], where


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("name, path", [("bench-network", "network"), ("bench-shm", "shared memory")])
def test_the_transport_benchmark_runs_across_nodes_and_within_one(runs, nodes, name, path):
    record, jobs = runs["records"][name], runs["jobs"]
    assert record["JobState"] == "COMPLETED", jobs.logs()
    log = (jobs.tmp / f"slurm-fedmpi-bench-transport-{runs['ids'][name]}.out").read_text()
    first, second = (nodes[0], nodes[1]) if path == "network" else (nodes[1], nodes[1])
    assert f"rank 0 on {first}, rank 1 on {second} ({path})" in log, log
    rows = [line.split() for line in log.splitlines() if re.match(r"\s+\d+ (B|KiB) ", line)]
    assert [f"{r[0]} {r[1]}" for r in rows] == [f"{8 << i} B" for i in range(7)] + [
        f"{1 << i} KiB" for i in range(7)], log  # 8 B .. 64 KiB
    for r in rows:  # size, unit, plain us, transport us, ratio, plain MB/s (8 B: 0.0 when
        # the other jobs load the cores), transport MB/s, ratio
        assert float(r[2]) > 0 and float(r[3]) > 0 and all(float(x) >= 0 for x in r[4:]), r
    assert re.search(r"targets: \d+ of 14 met", log), log
