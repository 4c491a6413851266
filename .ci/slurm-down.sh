#!/usr/bin/env bash
# Stop the one-node Slurm started by .ci/slurm-up.sh: slurmd, slurmctld, then munged,
# each by the process id in its pid file (never by name: other people's processes live
# on this machine). Waits (bounded) for each to exit; SIGKILL after 15 s.
set -uo pipefail

log() { echo "slurm-down: $*" >&2; }

stop_pid_file() {
    local name=$1 file=$2 pid
    [ -s "$file" ] || { log "$name: no pid file"; return 0; }
    pid=$(cat "$file")
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running"
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || { log "$name ($pid) stopped"; rm -f "$file"; return 0; }
        sleep 0.1
    done
    log "$name ($pid) did not stop in 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    rm -f "$file"
}

stop_pid_file slurmd /run/slurm/slurmd.pid
stop_pid_file slurmctld /run/slurm/slurmctld.pid
if [ "${SLURM_DOWN_KEEP_MUNGE:-0}" != 1 ]; then
    stop_pid_file munged /run/munge/munged.pid
fi
