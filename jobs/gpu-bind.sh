#!/usr/bin/env bash
# Per-rank GPU binding: `launcher ... jobs/gpu-bind.sh python -m fedmpi run ...`.
#
# Each rank sees exactly one GPU through CUDA_VISIBLE_DEVICES, chosen from its
# node-local rank L as  gpus[w mod G]  with w = L - 1 on the node of rank 0 (the server,
# local rank 0 there) and w = L on every other node -- the rule `fedmpi run` applies
# itself (fedmpi/devices.py: worker w of a node on GPU w), so the worker ranks of each node
# get GPUs 0..G-1 and the server gets the last GPU of its node, gpus[-1] (it only
# evaluates). Inside the rank the GPU is then cuda:0. The server's node is Slurm's node 0
# (SLURM_NODEID, set for srun's tasks and for hydra's proxies alike; rank 0 always runs on
# the first node); outside Slurm there is one node.
#
# The node-local rank comes from the launcher, most specific first:
#   MPI_LOCALRANKID            MPICH / Intel MPI hydra (mpiexec)
#   OMPI_COMM_WORLD_LOCAL_RANK Open MPI (mpirun / mpiexec)
#   SLURM_LOCALID              srun (checked last: under mpiexec inside a batch job it is
#                              inherited from the batch step and is 0 on every rank)
# The GPU list is CUDA_VISIBLE_DEVICES when already set (Slurm sets it for --gpus jobs),
# else every GPU that `nvidia-smi -L` lists. No GPU, or FEDMPI_GPU_BIND=0: nothing changes.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: gpu-bind.sh COMMAND [ARGS...]" >&2; exit 2; }

if [ "${FEDMPI_GPU_BIND:-1}" != 0 ]; then
    local_rank=${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-}}}
    gpus=()
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        for ((i = 0; i < n; i++)); do gpus+=("$i"); done
    fi
    if [ -n "$local_rank" ] && [ "${#gpus[@]}" -gt 0 ]; then
        g=${#gpus[@]}
        w=$local_rank
        [ "${SLURM_NODEID:-0}" = 0 ] && w=$((local_rank - 1))  # the server's node
        export CUDA_VISIBLE_DEVICES=${gpus[$(( (w % g + g) % g ))]}
    fi
fi
exec "$@"
