# shellcheck shell=bash
# Shared by run.sbatch and sweep.sbatch (sourced, not run). Needs FEDMPI_DIR, VENV,
# LAUNCHER, SRUN_MPI, MPIEXEC_ARGS, GPU_BIND from the sourcing script's settings block.
#
# The contract with `fedmpi run` (and `fedmpi sweep --task`, which passes it through):
#   exit 0 = completed; 75 = interrupted by SIGUSR1/SIGTERM with a checkpoint saved,
#   resumable with --resume FILE; anything else = failed.

fedmpi_log() { echo "[$(date +%H:%M:%S) fedmpi-job ${SLURM_JOB_ID:-?}] $*" >&2; }

# Python: the venv's if there is one, else whatever the module loads put on PATH.
fedmpi_python() {
    if [ -x "$VENV/bin/python" ]; then echo "$VENV/bin/python"; else command -v python3; fi
}

# The MPI launcher as a shell-quoted string for `N` ranks, e.g. "srun --mpi=pmi2 -n 3".
#   srun    : Slurm starts every rank itself; the MPI library must speak the PMI that
#             SRUN_MPI names (pmi2: MPICH incl. the PyPI wheel, Intel MPI, MVAPICH;
#             pmix: Open MPI >= 4 and MPICH built with PMIx).
#   mpiexec : the MPI's own launcher, which discovers the allocation from SLURM_* (hydra
#             and Open MPI's mpirun both do). Use it when srun's PMI does not match the
#             MPI you built mpi4py against.
fedmpi_launch_string() {
    local n=$1 bind=""
    [ "$GPU_BIND" = 1 ] && bind=" bash $(printf '%q' "$FEDMPI_DIR/jobs/gpu-bind.sh")"
    case "$LAUNCHER" in
        srun) echo "srun --mpi=$SRUN_MPI -n $n --kill-on-bad-exit=1${bind}" ;;
        mpiexec)
            local exe=mpiexec
            [ -x "$VENV/bin/mpiexec" ] && exe=$VENV/bin/mpiexec
            echo "$(printf '%q' "$exe") -n $n ${MPIEXEC_ARGS}${bind}" ;;
        *) fedmpi_log "LAUNCHER must be srun or mpiexec, got '$LAUNCHER'"; return 2 ;;
    esac
}

# Run "$@" in the background and turn SIGUSR1/SIGTERM to this script into SIGUSR1 to it
# (bash runs traps only between commands, so a foreground child would never hear about
# them). Always USR1, because the launchers differ on TERM (verified with Slurm 22.05 and
# MPICH 5.0 hydra): hydra's mpiexec forwards both USR1 and TERM to every rank, but srun
# forwards only USR1 -- a SIGTERM makes srun kill the step at once ("forcing job
# termination"). Rank 0 treats USR1 and TERM alike (checkpoint, exit 75); workers ignore
# both. Returns the child's exit status.
fedmpi_supervise() {
    "$@" &
    _fedmpi_child=$!
    _fedmpi_signalled=0
    trap '_fedmpi_forward USR1' USR1
    trap '_fedmpi_forward TERM' TERM
    local rc
    while :; do
        _fedmpi_signalled=0
        wait "$_fedmpi_child"
        rc=$?
        # A trapped signal interrupts `wait` (status > 128) while the child still runs:
        # wait again; bash keeps the child's real status for the next `wait`.
        [ "$_fedmpi_signalled" = 1 ] && kill -0 "$_fedmpi_child" 2>/dev/null && continue
        [ "$_fedmpi_signalled" = 1 ] && { wait "$_fedmpi_child"; rc=$?; }
        break
    done
    trap - USR1 TERM
    return "$rc"
}

_fedmpi_forward() {
    _fedmpi_signalled=1
    fedmpi_log "got SIG$1: sending SIGUSR1 to the run (pid $_fedmpi_child) to checkpoint and stop"
    kill -s USR1 "$_fedmpi_child" 2>/dev/null || true
}

# After the run: 75 (checkpointed) -> requeue this job so that it resumes; else pass the
# status on. Requeueing keeps SLURM_JOB_ID (hence the output file name) and increments
# SLURM_RESTART_COUNT. Set REQUEUE=0 to only exit 75.
fedmpi_finish() {
    local rc=$1
    if [ "$rc" = 75 ] && [ "${REQUEUE:-1}" = 1 ]; then
        fedmpi_log "run interrupted with a checkpoint (exit 75): requeueing job $SLURM_JOB_ID"
        if scontrol requeue "$SLURM_JOB_ID"; then
            exit 0   # normally not reached: the requeue ends this incarnation
        fi
        fedmpi_log "scontrol requeue failed: resubmit by hand; the next run resumes"
    fi
    fedmpi_log "run finished with exit status $rc"
    exit "$rc"
}
