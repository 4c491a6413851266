#!/usr/bin/env bash
# Stop the test Slurm started by .ci/slurm-up.sh: every slurmd, slurmctld, then munged,
# each by the process id in its pid file (never by name: other people's processes live
# on this machine), waiting (bounded) for each to exit, SIGKILL after 15 s. Then, for the
# two-node cluster, whatever still runs inside its network namespaces (job steps that
# outlived their slurmd, found with `ip netns pids`), and the namespaces, veths and
# bridge -- only those that .ci/slurm-up.sh recorded in /run/fedmpi-slurm as its own.
#
# Environment: SLURM_DOWN_KEEP_MUNGE=1 keeps munged (slurm-up.sh restarting the daemons
# after a config change).
set -uo pipefail

NET_DIR=/run/fedmpi-slurm
log() { echo "slurm-down: $*" >&2; }

wait_gone() {  # PID NAME: wait up to 15 s for PID to exit, then SIGKILL it
    local pid=$1 name=$2
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name ($pid) did not stop in 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    return 0
}

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
    wait_gone "$pid" "$name"
    log "$name ($pid) stopped"
    rm -f "$file"
}

recorded() { [ -s "$NET_DIR/$1" ] && sort -u "$NET_DIR/$1"; }

shopt -s nullglob
for f in /run/slurm/slurmd*.pid; do
    stop_pid_file "$(basename "$f" .pid)" "$f"
done
stop_pid_file slurmctld /run/slurm/slurmctld.pid

# Processes left in the nodes' namespaces: slurmstepd and job steps outlive slurmd.
for ns in $(recorded netns); do
    [ -e "/run/netns/$ns" ] || continue
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || continue
    log "netns $ns: stopping leftover processes $pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    for pid in $pids; do wait_gone "$pid" "process in $ns"; done
done

if [ "${SLURM_DOWN_KEEP_MUNGE:-0}" != 1 ]; then
    stop_pid_file munged /run/munge/munged.pid
fi

# Deleting a namespace deletes its eth0, and with it the veth's peer fnvN on the bridge.
for ns in $(recorded netns); do
    [ -e "/run/netns/$ns" ] && ip netns del "$ns" && log "netns $ns deleted"
done
for veth in $(recorded veth); do  # normally gone with its namespace already
    ip link show "$veth" >/dev/null 2>&1 && ip link del "$veth" 2>/dev/null && log "veth $veth deleted"
done
for br in $(recorded bridge); do
    ip link show "$br" >/dev/null 2>&1 && ip link del "$br" && log "bridge $br deleted"
done
rm -rf "$NET_DIR"
exit 0
