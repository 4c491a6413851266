"""Which device each MPI rank uses: a pure rule of (rank, node, visible GPUs, config).

Why pure: the rule must hold on clusters we cannot test on, so every variation
(Slurm giving each task one GPU, every task seeing all GPUs, ranks sharing a
GPU, the server's node vs the others) is a unit test with the environment
simulated; only `node_of` (MPI) and `select` (torch, os.environ) touch the world.

The rule, per node (ranks sharing memory, found by an MPI shared-memory split):
- worker ranks are numbered w = 0, 1, ... on their node (rank 0, the server, is
  not counted on its node); with G visible GPUs
  - `run.ranks_per_gpu: null` (default): one GPU per worker rank, GPU w; a node
    with more worker ranks than GPUs is a configuration error (share on request);
  - `run.ranks_per_gpu: k`: k consecutive worker ranks share one GPU, GPU w // k
    (at most k per GPU: more worker ranks than k * G is an error);
- when the launcher restricts each rank to one GPU (Slurm `--gpus-per-task`,
  jobs/gpu-bind.sh: CUDA_VISIBLE_DEVICES names one GPU and only one is visible)
  that GPU is cuda:0 and the launcher's choice is trusted;
- the server evaluates and aggregates on the node's last visible GPU (the one
  jobs/gpu-bind.sh gives local rank 0), on the CPU when it sees none;
- `run.device: cpu` forces the CPU; `cuda` makes a rank without a GPU an error.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from fedmpi.errors import ConfigError

# Node-local rank variables of the launchers, most specific first. SLURM_LOCALID
# comes last: under mpiexec inside a batch job it is inherited and 0 on every rank.
LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


@dataclass(frozen=True)
class Node:
    """This rank's place on its node."""

    local_rank: int
    local_size: int  # ranks on this node
    server_here: bool  # world rank 0 runs on this node
    source: str  # how local_rank was found

    @property
    def workers(self) -> int:
        """Worker ranks on this node."""
        return self.local_size - (1 if self.server_here else 0)

    @property
    def worker_index(self) -> int:
        """0, 1, ... among this node's worker ranks (-1 for the server)."""
        return self.local_rank - (1 if self.server_here else 0)


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:<index>" (index among the visible GPUs)
    visible: int  # GPUs this rank sees
    sharing: int  # worker ranks of this node on this GPU (0 on the CPU)
    note: str  # how it was chosen, for the log and the result file

    def describe(self, gpu_name: str = "") -> str:
        name = f" ({gpu_name})" if gpu_name else ""
        return f"{self.device}{name} [{self.note}]"


def env_local_rank(env: Mapping[str, str]) -> tuple[int, int | None, str] | None:
    """(local rank, local size or None, variable) as the launcher exported it, or None."""
    for i, var in enumerate(LOCAL_RANK_VARS):
        value = env.get(var, "")
        if value.strip().lstrip("-").isdigit():
            size = env.get(LOCAL_SIZE_VARS[i], "")
            return int(value), int(size) if size.strip().isdigit() else None, var
    return None


def node_of(comm) -> Node:
    """This rank's Node from an MPI shared-memory split (collective: every rank calls it)."""
    import numpy as np
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:  # buffer-based (no pickle): does this node host world rank 0?
        mine = np.array([1 if comm.Get_rank() == 0 else 0], dtype=np.int32)
        here = np.zeros(1, dtype=np.int32)
        node.Allreduce([mine, MPI.INT], [here, MPI.INT], op=MPI.SUM)
        found = Node(node.Get_rank(), node.Get_size(), bool(here[0]), "MPI shared-memory split")
    finally:
        node.Free()
    launcher = env_local_rank(os.environ)
    if launcher and launcher[0] != found.local_rank:  # e.g. SLURM_LOCALID under mpiexec
        found = Node(found.local_rank, found.local_size, found.server_here,
                     f"{found.source}; {launcher[2]}={launcher[0]} ignored")
    return found


def restricted(env: Mapping[str, str], visible: int) -> bool:
    """The launcher gave this rank exactly one GPU (CUDA_VISIBLE_DEVICES names one)."""
    ids = [s for s in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return visible == 1 and len(ids) == 1


def place(choice: str, *, rank: int, node: Node, visible: int, ranks_per_gpu: int | None = None,
          one_gpu_per_rank: bool = False) -> Placement:
    """The device of `rank`; ConfigError when the config asks for what the node lacks."""
    if choice == "cpu":
        return Placement("cpu", visible, 0, "run.device: cpu")
    if visible == 0:
        if choice == "cuda":
            raise ConfigError("run.device", choice,
                              f"auto or cpu (no CUDA device is visible to rank {rank})")
        return Placement("cpu", 0, 0, "no GPU visible")
    where = f"local rank {node.local_rank} of {node.local_size} ({node.source}), " \
            f"{visible} visible GPU{'s' if visible > 1 else ''}"
    if one_gpu_per_rank:
        note = "the launcher gave this rank one GPU"
        return Placement("cuda:0", 1, 1, f"{where}; {note}" + ("; server" if rank == 0 else ""))
    k = ranks_per_gpu
    workers = node.workers
    if k is None and workers > visible:
        raise ConfigError("run.ranks_per_gpu", None,
                          f"an integer >= {math.ceil(workers / visible)}: a node runs {workers} "
                          f"worker ranks on {visible} GPU{'s' if visible > 1 else ''}; set it "
                          "to let worker ranks share a GPU, or start fewer ranks per node")
    if k is not None and workers > k * visible:
        raise ConfigError("run.ranks_per_gpu", k,
                          f"an integer >= {math.ceil(workers / visible)}: a node runs {workers} "
                          f"worker ranks on {visible} GPU{'s' if visible > 1 else ''}")
    per = 1 if k is None else k

    def gpu(w: int) -> int:
        return (w // per) % visible

    index = visible - 1 if rank == 0 else gpu(node.worker_index)
    sharing = sum(1 for w in range(workers) if gpu(w) == index)
    role = "server, " if rank == 0 else ""
    note = f"{where}; {role}{sharing} worker rank{'s' if sharing != 1 else ''} on this GPU"
    return Placement(f"cuda:{index}", visible, sharing, note)


def select(run_cfg, *, rank: int, node: Node, env: Mapping[str, str] | None = None) -> Placement:
    """`place` for this process: visible GPUs from torch, the launcher's restriction from env."""
    import torch

    env = os.environ if env is None else env
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return place(run_cfg.device, rank=rank, node=node, visible=visible,
                 ranks_per_gpu=getattr(run_cfg, "ranks_per_gpu", None),
                 one_gpu_per_rank=restricted(env, visible))


def label(placement: Placement) -> str:
    """What goes into the result file's `devices` list for this rank."""
    if placement.device == "cpu":
        return "cpu"
    import torch

    from fedmpi import cuda_mpi

    name = torch.cuda.get_device_name(int(placement.device.split(":")[1]))
    return placement.describe(name)[:-1] + f"; {cuda_mpi.describe()}]"


def announce(devices: list[str], file=None) -> None:
    """Rank 0 prints the device of every rank once, when any of them is a GPU."""
    file = sys.stderr if file is None else file
    if any(d.startswith("cuda") for d in devices):
        for r, d in enumerate(devices):
            print(f"fedmpi: rank {r} -> {d}", file=file)
