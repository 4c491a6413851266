"""Run by every rank of a multi-node test job: where am I, and which device would I take?

Writes one JSON list (one entry per world rank) to argv[1], from rank 0: host name, the
node found by `fedmpi.devices.node_of` (the MPI shared-memory split `fedmpi run` uses),
the launcher's node-local rank variables, CUDA_VISIBLE_DEVICES as this rank sees it
(after jobs/gpu-bind.sh, when the launch goes through it) and the device that
`fedmpi.devices.place` picks with that many GPUs visible. No GPU is needed: the GPUs
are simulated through CUDA_VISIBLE_DEVICES (what Slurm's --gpus-per-node sets on each
node), which is all that the binding rules read.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from mpi4py import MPI

from fedmpi.devices import node_of, place, restricted


def ancestors(pid: int, depth: int = 4) -> list[str]:
    """Names of the processes above `pid` (parent first): who started this rank."""
    names = []
    for _ in range(depth):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
        try:
            with open(f"/proc/{pid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            break
    return names


def main() -> None:
    comm = MPI.COMM_WORLD
    node = node_of(comm)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [s for s in cvd.split(",") if s.strip()]
    placement = place("auto", rank=comm.rank, node=node, visible=len(ids),
                      one_gpu_per_rank=restricted(os.environ, len(ids)))
    device = placement.device
    physical = ids[int(device.split(":")[1])] if device.startswith("cuda") else None
    me = {"rank": comm.rank, "host": socket.gethostname(), "proc": MPI.Get_processor_name(),
          "local_rank": node.local_rank, "local_size": node.local_size,
          "server_here": node.server_here, "visible": cvd, "device": device,
          "gpu": physical, "started_by": ancestors(os.getpid()), **{k: os.environ.get(k) for k in
                              ("MPI_LOCALRANKID", "SLURM_LOCALID", "SLURM_NODEID")}}
    everyone = comm.gather(me, root=0)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f, indent=1)


if __name__ == "__main__":
    main()
