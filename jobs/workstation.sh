#!/usr/bin/env bash
# One fedmpi experiment on this machine with mpiexec.
#
#   jobs/workstation.sh CONFIG [-n RANKS] [fedmpi run args...]
#   jobs/workstation.sh configs/quickstart.yaml -n 3 --set rounds=5 --out results/q.h5
#
# RANKS = 1 server + client workers; default 1 + number of GPUs when there are GPUs,
# else 3. The launcher is .venv/bin/mpiexec when present (the PyPI mpich wheel), else
# `mpiexec` on PATH; override with MPIEXEC=/path/to/mpiexec, add launcher options with
# MPIEXEC_ARGS="...". Open MPI as root gets --allow-run-as-root's variables set for you.
#
# GPUs: when nvidia-smi lists GPUs (or CUDA_VISIBLE_DEVICES is set), every rank runs
# through jobs/gpu-bind.sh, which gives it one GPU via CUDA_VISIBLE_DEVICES from its
# node-local rank L: GPU (L-1) mod G, so worker ranks 1..G get GPUs 0..G-1 (the same
# mapping fedmpi run uses, cuda:(local_rank-1) % ngpus). FEDMPI_GPU_BIND=0 turns it off.
#
# The exit status is the run's: 0 completed, 75 interrupted and resumable with
# jobs/workstation.sh --resume FILE.h5 ; anything else failed. (CONFIG and --set may come
# along with --resume only if they repeat the stored config.) SIGTERM, SIGINT (Ctrl-C)
# or SIGUSR1 to this script is a graceful stop with any launcher: the script runs the
# launcher in its own session and sends it SIGUSR1, which every launcher forwards to
# every rank (Open MPI's mpirun would abort the job on TERM/INT, exit 1); rank 0
# finishes the round, checkpoints and exits 75. A second TERM/INT aborts the run.
# The ranks' Python: FEDMPI_PYTHON, else .venv/bin/python, else python3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

usage() { echo "usage: $0 CONFIG [-n RANKS] [fedmpi run args...]" >&2; exit 2; }

ranks=""
config=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n|--ranks) [ $# -ge 2 ] || usage; ranks=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) if [ -z "$config" ]; then config=$1; else args+=("$1"); fi; shift ;;
    esac
done
[ -n "$config" ] || usage

ngpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
    ngpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
if [ -z "$ranks" ]; then
    if [ "$ngpus" -gt 0 ]; then ranks=$((ngpus + 1)); else ranks=3; fi
fi
if ! [[ "$ranks" =~ ^[0-9]+$ ]] || [ "$ranks" -lt 2 ]; then
    echo "$0: -n must be >= 2 (1 server + >= 1 client worker), got '$ranks'" >&2
    exit 2
fi

python=python3
[ -x "$root/.venv/bin/python" ] && python=$root/.venv/bin/python
python=${FEDMPI_PYTHON:-$python}
if [ -z "${MPIEXEC:-}" ]; then
    if [ -x "$root/.venv/bin/mpiexec" ]; then MPIEXEC=$root/.venv/bin/mpiexec
    elif command -v mpiexec >/dev/null; then MPIEXEC=$(command -v mpiexec)
    else echo "$0: no mpiexec (install the mpich wheel in .venv or load an MPI module)" >&2; exit 2
    fi
fi
if [ "$(id -u)" = 0 ] && "$MPIEXEC" --version 2>/dev/null | grep -qi 'open mpi\|open-rte'; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

bind=()
if [ "${FEDMPI_GPU_BIND:-1}" != 0 ] && { [ "$ngpus" -gt 0 ] || [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; }; then
    bind=(bash "$here/gpu-bind.sh")
fi

# shellcheck disable=SC2086  # MPIEXEC_ARGS is a word list on purpose
cmd=("$MPIEXEC" -n "$ranks" ${MPIEXEC_ARGS:-} "${bind[@]}" "$python" -m fedmpi run "$config" "${args[@]}")
echo "+ ${cmd[*]}" >&2
# Own session: a terminal's Ctrl-C reaches this script only, which turns it into SIGUSR1.
setsid "${cmd[@]}" &
child=$!
stops=0
forward() {
    stops=$((stops + 1))
    if [ "$stops" = 1 ] || [ "$1" = USR1 ]; then
        echo "$0: got SIG$1: the run checkpoints after this round and stops (again to abort)" >&2
        kill -USR1 "$child" 2>/dev/null || true
    else
        echo "$0: got SIG$1 again: aborting the run" >&2
        kill -TERM "$child" 2>/dev/null || true
    fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward USR1' USR1
set +e
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null && continue  # a trap interrupted `wait`: keep waiting
    [ "$rc" -gt 128 ] && { wait "$child"; rc=$?; }  # the child's own status
    break
done
exit "$rc"
