# shellcheck shell=bash
# Shared by run.sbatch and sweep.sbatch (sourced after settings.sh, not run).
#
# The contract with `fedmpi run` (and `fedmpi sweep --task`, which passes it through):
#   exit 0 = completed; 2 = configuration error (nothing ran); 75 = stopped by
#   SIGUSR1/SIGTERM with a checkpoint saved, resumable with --resume FILE; else failed.
# The exit status alone is not trusted: the result file's `status` decides (a run that
# completed every round but whose launcher exited non-zero in teardown is a success).
#
# What Slurm sends (checked with Slurm 22.05, MPICH 5.0 hydra and srun --mpi=pmi2):
#   - `scancel JOBID`, the time limit, preemption: SIGCONT + SIGTERM to every process of
#     the job at once -- this script, srun/mpiexec and every rank -- and SIGKILL KillWait
#     seconds later. srun answers with "forcing job termination" but the ranks live on
#     until SIGKILL, so rank 0 (which treats TERM like USR1) usually finishes its round,
#     checkpoints and marks the file `interrupted`. A SIGTERM always means "stop for good":
#     the job is being ended by Slurm (a requeue by this script would undo a cancel).
#   - `scancel --signal=USR1 --batch JOBID` and `--signal=B:USR1@T`: SIGUSR1 to this
#     script only. This script also sends itself SIGUSR1 shortly before the time limit
#     (STOP_MARGIN, capped at a quarter of the limit). A SIGUSR1 asks for a requeueing
#     stop: checkpoint, then `scontrol requeue` -- if this incarnation completed a round.

fedmpi_log() { echo "[$(date +%H:%M:%S) fedmpi-job ${SLURM_JOB_ID:-?}] $*" >&2; }

# ------------------------------------------------------------------------- python, paths

# Set $python to a Python that imports fedmpi and mpi4py, or exit 2 with one line that
# says what to set. VENV given but without bin/python is an error (never a silent
# fallback); VENV empty: the repository's .venv, else python3 on PATH (module loads).
fedmpi_find_python() {
    if [ -n "${VENV:-}" ]; then
        [ -x "$VENV/bin/python" ] || fedmpi_die "VENV=$VENV has no bin/python: set VENV to the virtualenv where fedmpi is installed (pip install -e .), or leave it empty to use python3 on PATH"
        python=$VENV/bin/python
    elif [ -x "$FEDMPI_DIR/.venv/bin/python" ]; then
        python=$FEDMPI_DIR/.venv/bin/python
    else
        python=$(command -v python3) || fedmpi_die "no $FEDMPI_DIR/.venv and no python3 on PATH: set VENV=/path/to/venv or load a Python module in jobs/slurm/settings.sh"
    fi
    local out
    if ! out=$("$python" -c 'import fedmpi, mpi4py; print(fedmpi.__file__)' 2>&1); then
        fedmpi_die "$python cannot import fedmpi and mpi4py ($(printf '%s\n' "$out" | tail -n 1)): set VENV=/path/to/venv where 'pip install -e .' put them, or load the modules that provide them in jobs/slurm/settings.sh"
    fi
    fedmpi_log "python $python (fedmpi from $out)"
}

fedmpi_die() { fedmpi_log "ERROR: $*"; exit 2; }

# A path given on the command line, made absolute: relative to the folder the job was
# submitted from when it exists there, else to the repository (the job runs in it).
fedmpi_abspath() {
    local p=$1 base
    case "$p" in
        /*) ;;
        *) for base in "${SLURM_SUBMIT_DIR:-$PWD}" "$FEDMPI_DIR" ""; do
               [ -z "$base" ] && { p=$FEDMPI_DIR/$p; break; }
               [ -e "$base/$p" ] && { p=$base/$p; break; }
           done ;;
    esac
    if [ -d "$(dirname -- "$p")" ]; then  # tidy a/../b: the path appears in logs and hints
        p="$(cd "$(dirname -- "$p")" && pwd)/$(basename -- "$p")"
    fi
    echo "$p"
}

# ------------------------------------------------------------------------------ launcher

# The MPI launcher as a shell-quoted string for `N` ranks, e.g. "srun --mpi=pmi2 -n 3".
#   srun    : Slurm starts every rank itself; the MPI library must speak the PMI that
#             SRUN_MPI names (pmi2: MPICH incl. the PyPI wheel, Intel MPI, MVAPICH;
#             pmix: Open MPI >= 4 and MPICH built with PMIx).
#   mpiexec : the MPI's own launcher, which discovers the allocation from SLURM_* (hydra
#             and Open MPI's mpirun both do). Use it when srun's PMI does not match the
#             MPI you built mpi4py against.
# No `srun --kill-on-bad-exit`: a rank killed on another node (OOM, kill -9) made srun
# SIGTERM the step at once; rank 0 took that for a stop, waited for a round that could
# not finish, and KillWait's SIGKILL left the file `running` with no reason. Without it,
# fedmpi's own rules end the job: rank 0 names the silent rank within the liveness limit
# (max(run.timeout_s, 10 x the slowest round)), marks the file `failed` (resumable) and
# aborts; a rank that fails with an error reports it to rank 0 at once.
# SERVER_NODE=alone: rank 0 alone on the first node of the allocation and the workers on
# the others, as many on each as Slurm gave it tasks (sbatch -N 3 --ntasks-per-node=4:
# 1 + 2 x 4 = 9 ranks); N is then that count, not the argument.
fedmpi_launch_string() {
    local n=$1 bind="" place="" hosts=""
    [ "$GPU_BIND" = 1 ] && bind=" bash $(printf '%q' "$FEDMPI_DIR/jobs/gpu-bind.sh")"
    case "${SERVER_NODE:-shared}" in
        shared) ;;
        alone)
            local nodes counts i k
            mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null)
            read -r -a counts <<<"$(fedmpi_tasks_per_node "${SLURM_TASKS_PER_NODE:-}")"
            if [ "${#nodes[@]}" -lt 2 ] || [ "${#counts[@]}" -ne "${#nodes[@]}" ]; then
                fedmpi_log "ERROR: SERVER_NODE=alone needs an allocation of 2 or more nodes (sbatch --nodes=2 --ntasks-per-node=K); this job has nodes '${SLURM_JOB_NODELIST:-}' with tasks '${SLURM_TASKS_PER_NODE:-}'"
                return 2
            fi
            place=${nodes[0]}
            hosts="${nodes[0]}:1"
            n=1
            for ((i = 1; i < ${#nodes[@]}; i++)); do
                for ((k = 0; k < counts[i]; k++)); do place+=$'\n'${nodes[i]}; done
                hosts+=",${nodes[i]}:${counts[i]}"
                n=$((n + counts[i]))
            done
            fedmpi_log "SERVER_NODE=alone: rank 0 alone on ${nodes[0]}; $((n - 1)) workers on ${nodes[*]:1} (hosts $hosts)" ;;
        *) fedmpi_log "ERROR: SERVER_NODE must be shared or alone, got '$SERVER_NODE'"; return 2 ;;
    esac
    case "$LAUNCHER" in
        srun)
            if [ -n "$place" ]; then  # one line per task: srun's arbitrary distribution
                # (without the job's --ntasks-per-node, which srun would warn it ignores);
                # fedmpi_finish removes the file
                local file
                file=$(mktemp "${TMPDIR:-/tmp}/fedmpi-hosts-${SLURM_JOB_ID:-x}.XXXXXX") || return 2
                printf '%s\n' "$place" > "$file"
                place=$file
                [ "$GPU_BIND" = 1 ] || fedmpi_log "WARNING: SERVER_NODE=alone under srun: MPICH gets no node map from PMI2 and fedmpi sees every rank alone on its node, so with GPU_BIND=$GPU_BIND all workers of a node take its GPU 0; keep GPU_BIND=1 or use LAUNCHER=mpiexec"
                echo "env -u SLURM_NTASKS_PER_NODE SLURM_HOSTFILE=$(printf '%q' "$place") srun --mpi=$SRUN_MPI --distribution=arbitrary -n $n${bind}"
            else
                echo "srun --mpi=$SRUN_MPI -n $n${bind}"
            fi ;;
        mpiexec)
            local exe=${MPIEXEC:-}
            if [ -z "$exe" ]; then
                exe=mpiexec
                [ -x "$(dirname "$python")/mpiexec" ] && exe=$(dirname "$python")/mpiexec
            fi
            if [ -n "$hosts" ]; then  # hydra's -hosts; Open MPI's mpirun takes --host
                if "$exe" --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
                    hosts="--host $hosts "
                else
                    hosts="-hosts $hosts "
                fi
            fi
            echo "$(printf '%q' "$exe") -n $n ${hosts}${MPIEXEC_ARGS}${bind}" ;;
        *) fedmpi_log "ERROR: LAUNCHER must be srun or mpiexec, got '$LAUNCHER'"; return 2 ;;
    esac
}

# SLURM_TASKS_PER_NODE ("2(x3),1") as one count per node ("2 2 2 1").
fedmpi_tasks_per_node() {
    local part parts out=() c r
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ "$part" =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
            c=${BASH_REMATCH[1]}
            for ((r = 0; r < BASH_REMATCH[2]; r++)); do out+=("$c"); done
        elif [[ "$part" =~ ^[0-9]+$ ]]; then
            out+=("$part")
        fi
    done
    echo "${out[*]}"
}

# ---------------------------------------------------------------------- the result file

# "STATUS<TAB>COMPLETED_ROUNDS<TAB>START_TIME" of a result file; STATUS is `missing` or
# `unreadable` when there is no usable file. Read without locks, like `fedmpi watch`.
fedmpi_file_state() {
    [ -e "$1" ] || { printf 'missing\t0\t-\n'; return; }
    "$python" - "$1" 2>/dev/null <<'PY' || printf 'unreadable\t0\t-\n'
import sys

import h5py

with h5py.File(sys.argv[1], "r", locking=False) as f:
    a = f.attrs
    print(f"{a.get('status', '') or 'unreadable'}\t{int(a.get('completed_rounds', 0))}\t"
          f"{a.get('start_time', '') or '-'}")
PY
}

# --------------------------------------------------------------------- the time warning

# Seconds in a Slurm duration ("UNLIMITED", "[D-]HH:MM:SS", "MM:SS"); empty if none.
fedmpi_seconds() {
    local t=$1 d=0 h=0 m=0 s=0
    case "$t" in
        *-*) d=${t%%-*}; t=${t#*-} ;;
    esac
    case "$t" in
        *:*:*) IFS=: read -r h m s <<<"$t" ;;
        *:*) IFS=: read -r m s <<<"$t" ;;
        *) return 0 ;;
    esac
    [[ "$d$h$m$s" =~ ^[0-9]+$ ]] || return 0
    echo $(( 10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s ))
}

# The stop margin for LEFT seconds of time left: STOP_MARGIN, but at most a quarter of
# LEFT -- with --time=5 a fixed 300 s would stop every incarnation at its start.
fedmpi_stop_margin() {
    local left=$1 margin=$2
    [ "$margin" -gt $(( left / 4 )) ] && margin=$(( left / 4 ))
    echo "$margin"
}

# Seconds this job has left, from Slurm (empty when unlimited or unknown). Read at the
# start of each incarnation: a requeued job gets its full time limit again.
fedmpi_time_left() {
    fedmpi_seconds "$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null | head -n 1)"
}

# Send this script SIGUSR1 STOP_MARGIN (capped) seconds before the time limit.
fedmpi_arm_warning() {
    local left margin me=$$
    [[ "$STOP_MARGIN" =~ ^[0-9]+$ ]] || fedmpi_die "STOP_MARGIN must be a number of seconds, got '$STOP_MARGIN'"
    left=$(fedmpi_time_left)
    if [ -z "$left" ]; then
        fedmpi_log "no time limit known: no stop before it (scancel --signal=USR1 --batch $SLURM_JOB_ID stops and requeues)"
        return
    fi
    margin=$(fedmpi_stop_margin "$left" "$STOP_MARGIN")
    fedmpi_log "time left ${left}s: stopping to requeue ${margin}s before the limit (STOP_MARGIN=$STOP_MARGIN, at most a quarter)"
    (
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        sleep $(( left - margin )) &
        sleeper=$!
        wait "$sleeper" && kill -s USR1 "$me"
    ) &
    _fedmpi_timer=$!
}

fedmpi_disarm_warning() {
    [ -n "${_fedmpi_timer:-}" ] && kill "$_fedmpi_timer" 2>/dev/null
    _fedmpi_timer=""
}

# ------------------------------------------------------------------- run and supervise

# Run "$@" in the background and turn SIGUSR1/SIGTERM to this script into SIGUSR1 to it
# (bash runs traps only between commands, so a foreground child would never hear about
# them). Always USR1, because the launchers differ on TERM: hydra's mpiexec forwards both
# USR1 and TERM to every rank, but srun forwards only USR1 -- on SIGTERM it gives up on
# the step ("forcing job termination"). Rank 0 treats USR1 and TERM alike (checkpoint,
# exit 75); workers ignore both. Records which signals came (_fedmpi_got_usr1/_term) and
# returns the child's exit status.
fedmpi_supervise() {
    _fedmpi_got_usr1=0
    _fedmpi_got_term=0
    "$@" &
    _fedmpi_child=$!
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
    fedmpi_disarm_warning
    return "$rc"
}

_fedmpi_forward() {
    _fedmpi_signalled=1
    if [ "$1" = TERM ]; then
        _fedmpi_got_term=1
        fedmpi_log "got SIGTERM (scancel, time limit or preemption): the run stops for good (no requeue)"
    else
        _fedmpi_got_usr1=1
        fedmpi_log "got SIGUSR1: the run checkpoints and stops; the job requeues itself"
    fi
    kill -s USR1 "$_fedmpi_child" 2>/dev/null || true
}

# ----------------------------------------------------------------------- the decision

# What to do once the run is over. Pure (tested in tests/slurm/test_scripts.py):
#   fedmpi_outcome RC BEFORE_STATE AFTER_STATE GOT_USR1 GOT_TERM REQUEUE
# with *_STATE as printed by fedmpi_file_state. Prints "ACTION EXIT MESSAGE", ACTION one
# of exit | requeue. The rules:
#   - exit 2 (configuration error, or a sweep refusing a stale file): nothing ran, exit 2;
#   - the file was completed before: nothing ran (a skipped grid point), pass RC on;
#   - the file is completed now: success (exit 0), whatever the launcher returned;
#   - the file is interrupted: requeue, unless a SIGTERM came (Slurm is ending the job:
#     a cancel stays a cancel), REQUEUE=0, or this incarnation completed no round (a
#     requeue would start the same incarnation again: never a loop); else exit 75;
#   - anything else (failed, running after a hard kill, missing): failure, exit RC (1 if
#     RC was 0 or 75).
fedmpi_outcome() {
    local rc=$1 before=$2 after=$3 usr1=$4 term=$5 requeue=$6
    local b_status b_rounds b_start a_status a_rounds a_start fail=$rc
    IFS=$'\t' read -r b_status b_rounds b_start <<<"$before"
    IFS=$'\t' read -r a_status a_rounds a_start <<<"$after"
    { [ "$fail" = 0 ] || [ "$fail" = 75 ]; } && fail=1
    if [ "$rc" = 2 ]; then
        echo "exit 2 configuration error or refusal (exit 2; see the message above): nothing ran"
    elif [ "$b_status" = completed ] && [ "$a_status" = completed ]; then
        echo "exit $rc the result file was already completed: nothing to run"
    elif [ "$a_status" = completed ]; then
        if [ "$rc" = 0 ]; then
            echo "exit 0 run completed ($a_rounds rounds)"
        else
            echo "exit 0 run completed ($a_rounds rounds); its launcher exited $rc afterwards (teardown), which does not make it a failure"
        fi
    elif [ "$a_status" = interrupted ]; then
        local progress=0
        if [ "$a_rounds" -gt 0 ] && { [ "$a_start" != "$b_start" ] || [ "$a_rounds" -gt "$b_rounds" ]; }; then
            progress=1
        fi
        if [ "$term" = 1 ]; then
            echo "exit 75 stopped for good by SIGTERM (a cancel or the time limit): not requeueing; interrupted after $a_rounds rounds, resumable by hand"
        elif [ "$requeue" != 1 ]; then
            echo "exit 75 stopped after $a_rounds rounds; REQUEUE=$requeue: not requeueing; resumable by hand"
        elif [ "$progress" = 0 ]; then
            echo "exit 75 stopped before completing a round in this incarnation ($a_rounds rounds): not requeueing, since it would loop (a longer --time, or a smaller STOP_MARGIN, must fit a round); resumable by hand"
        else
            echo "requeue 75 stopped with a checkpoint after $a_rounds rounds (exit $rc)"
        fi
    elif [ "$a_status" = running ] && [ "$a_rounds" -gt 0 ]; then
        echo "exit $fail run ended (exit $rc) without marking the file; it is left 'running' after $a_rounds rounds and resumable by hand from its last checkpoint"
    else
        local resumable=""
        [ "$a_status" = failed ] && [ "$a_rounds" -gt 0 ] && resumable=", resumable by hand from its last checkpoint"
        echo "exit $fail run failed (exit $rc); result file: $a_status after $a_rounds rounds$resumable"
    fi
}

# After the run: read the file, decide with fedmpi_outcome, requeue or exit.
# Usage: fedmpi_finish RC FILE BEFORE_STATE RESUME_HINT
fedmpi_finish() {
    local rc=$1 file=$2 before=$3 hint=$4 after decision action code message
    rm -f "${TMPDIR:-/tmp}/fedmpi-hosts-${SLURM_JOB_ID:-x}".*  # SERVER_NODE=alone's host file
    after=$(fedmpi_file_state "$file")
    if [ "$_fedmpi_got_term" = 1 ]; then
        # srun may return while rank 0 still checkpoints: give it until Slurm's SIGKILL.
        local waited=0
        while [ "${after%%$'\t'*}" = running ] && [ "$waited" -lt "${FEDMPI_SETTLE_S:-60}" ]; do
            sleep 1
            waited=$((waited + 1))
            after=$(fedmpi_file_state "$file")
        done
    fi
    decision=$(fedmpi_outcome "$rc" "$before" "$after" "$_fedmpi_got_usr1" "$_fedmpi_got_term" "${REQUEUE:-1}")
    read -r action code message <<<"$decision"
    fedmpi_log "$message"
    case "$message" in
        *"by hand"*) fedmpi_log "resume by hand: $hint" ;;
    esac
    if [ "$action" = requeue ]; then
        # Requeueing keeps SLURM_JOB_ID (hence the file and log names) and increments
        # SLURM_RESTART_COUNT; Slurm holds the job cred_expire + 1 s before it restarts.
        fedmpi_log "requeueing job $SLURM_JOB_ID: the next incarnation resumes $file"
        if scontrol requeue "$SLURM_JOB_ID"; then
            exit 0
        fi
        fedmpi_log "scontrol requeue failed: resume by hand: $hint"
    fi
    fedmpi_log "exit status $code"
    exit "$code"
}
