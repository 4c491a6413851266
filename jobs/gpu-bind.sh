#!/usr/bin/env bash
# Per-rank GPU binding: `launcher ... jobs/gpu-bind.sh python -m fedmpi run ...`.
#
# Each rank sees exactly one GPU through CUDA_VISIBLE_DEVICES, chosen from its
# node-local rank L as  gpus[(L - 1) mod G]  -- the same rule `fedmpi run` uses for
# worker ranks (cuda:(local_rank-1) % ngpus), so worker ranks 1..G on the first node get
# GPUs 0..G-1 and the server (rank 0, local rank 0) shares the last one (it only
# evaluates). Inside the rank the GPU is then cuda:0.
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
        export CUDA_VISIBLE_DEVICES=${gpus[$(( ((local_rank - 1) % g + g) % g ))]}
    fi
fi
exec "$@"
