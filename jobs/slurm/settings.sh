# shellcheck shell=bash
# ======================= USER SETTINGS for run.sbatch and sweep.sbatch ====================
# Sourced by both job scripts (edit it once for your site). The #SBATCH lines (account,
# partition, time, tasks, GPUs, log file) cannot live here: Slurm reads them from the top
# of each .sbatch file, so edit those there.
#
# Every value marked (env) can also be given at submit time without editing, e.g.
#   LAUNCHER=mpiexec sbatch jobs/slurm/run.sbatch ...      (sbatch exports your environment)

# module purge; module load openmpi/4.1 cuda/12.4   # cluster modules, if any

VENV=${VENV:-}                        # (env) virtualenv with fedmpi + mpi4py; empty: the
                                      #       repository's .venv if there is one, else the
                                      #       python3 on PATH (e.g. from a module)
LAUNCHER=${LAUNCHER:-srun}            # (env) srun | mpiexec (see common.sh)
SRUN_MPI=${SRUN_MPI:-pmi2}            # (env) srun --mpi=: pmi2 (MPICH, Intel MPI) | pmix (Open MPI)
MPIEXEC=${MPIEXEC:-}                  # (env) mpiexec to use; empty: the one beside the venv's
                                      #       python if any, else mpiexec on PATH
MPIEXEC_ARGS=${MPIEXEC_ARGS:-}        # (env) e.g. --allow-run-as-root (Open MPI as root)
GPU_BIND=${GPU_BIND:-1}               # (env) 1: one GPU per rank via jobs/gpu-bind.sh
SERVER_NODE=${SERVER_NODE:-shared}    # (env) shared: rank 0 and workers fill the nodes in order;
                                      #       alone: rank 0 alone on the first node, the workers
                                      #       on the others (--nodes >= 2; see jobs/README.md)
RESULTS_DIR=${RESULTS_DIR:-results}   # (env) where the .h5 files go (relative: to the repository)
REQUEUE=${REQUEUE:-1}                 # (env) 1: requeue after a stop for the time limit / SIGUSR1
STOP_MARGIN=${STOP_MARGIN:-300}       # (env) seconds before the time limit at which the run
                                      #       checkpoints and the job requeues itself; capped at
                                      #       a quarter of the time limit (short jobs), so it
                                      #       must exceed your longest round + checkpoint
# ==========================================================================================
