#!/usr/bin/env bash
# Start a test Slurm on this machine (as root, no systemd), for tests/slurm: by default
# two nodes, n1 and n2, whose MPI ranks talk over TCP; FEDMPI_SLURM_NODES=1 starts the
# older one-node cluster (the machine's own host name as the only node). The one-node
# tests run on either: a job that fits one node runs on n1 or n2.
#
# Two nodes on one machine (see shared/SLURM-NOTES.md, "Two nodes on one machine"):
#   - a bridge fnbr0 (10.251.7.1/24, slurmctld's address) in the root namespace and one
#     network namespace per node, fn1 / fn2, each with a veth `eth0` (10.251.7.2 / .3)
#     whose peer fnv1 / fnv2 is on the bridge; nothing leaves the machine;
#   - slurmctld and munged in the root namespace; each slurmd entered with
#     `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the cgroup
#     mounts slurmd wants) and then `unshare --uts --ipc --mount`:
#       --uts   its own host name (MPI_Get_processor_name, the result file's `hosts`);
#       --ipc   its own System V IPC: without it the MPICH wheel still takes shared memory
#               between the "nodes"; with it ranks on different nodes use TCP;
#       --mount a private /etc/hosts (bind-mounted) that also names n1 and n2, for hydra
#               (`mpiexec` resolves node names); the machine's /etc/hosts is not changed.
#     Everything a job starts lives in its node's namespaces.
#   - each node has CPUs=8 (more than the machine has), so a 3-rank job fits on one node
#     and `sbatch -N 2 --ntasks=4` spans both.
# Idempotent: installs what is missing, writes the config only if it changed (then
# restarts the daemons), starts each piece only if it is not already there, then waits
# (bounded) until every node is idle and a one-task step runs on each of them.
# Stop everything with .ci/slurm-down.sh (by pid; then the namespaces, veths, bridge).
#
# Why the other settings:
#   - proctrack/linuxproc + task/none: the cgroup plugins make slurmd fail in containers;
#   - SlurmdParameters=config_overrides: the node's CPUs as written, not as detected;
#   - JobRequeue=1: `scontrol requeue` and --requeue work (the requeue tests need it);
#   - AuthInfo=cred_expire=15: a requeued job may start again cred_expire+1 s after the
#     requeue (default 120 s: too slow for a test). Releasing it earlier by hand
#     (`scontrol update StartTime=now`) fails: "Job credential revoked";
#   - MinJobAge=3600: finished jobs stay visible to `scontrol show job` for an hour,
#     because there is no accounting daemon (no sacct) here.
#
# Environment: FEDMPI_SLURM_NODES (2 or 1, default 2), SLURM_UP_TIMEOUT (seconds to wait
# for the nodes, default 60).
set -euo pipefail

NODES=${FEDMPI_SLURM_NODES:-2}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
NET_DIR=/run/fedmpi-slurm      # what this script created (read by slurm-down.sh)
BRIDGE=fnbr0
SUBNET=10.251.7
start=$(date +%s)

log() { echo "slurm-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
case "$NODES" in
    1|2) ;;
    *) die "FEDMPI_SLURM_NODES must be 1 or 2, got '$NODES'" ;;
esac

# --- 1. packages ------------------------------------------------------------------------
# slurm-wlm + munge; for two nodes also iproute2 (ip) and util-linux (nsenter, unshare).
missing=()
for c in slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
if [ "$NODES" = 2 ]; then
    command -v ip >/dev/null || missing+=(iproute2)
    for c in nsenter unshare mount; do command -v "$c" >/dev/null || missing+=(util-linux); done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2046
    apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# --- 2. munge ---------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    if command -v mungekey >/dev/null; then
        mungekey -c -f -k /etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

# --- 3. slurm.conf ----------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
if [ "$NODES" = 2 ]; then
    NODE_NAMES=(n1 n2)
    ctld_host="$HOST($SUBNET.1)"
    node_conf="SlurmdSpoolDir=$SPOOL_DIR/%n
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
NodeName=n1 NodeAddr=$SUBNET.2 NodeHostname=n1 CPUs=8 RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeAddr=$SUBNET.3 NodeHostname=n2 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP"
else
    NODE_NAMES=("$HOST")
    ctld_host=$HOST
    node_conf="SlurmdSpoolDir=$SPOOL_DIR
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$HOST CPUs=16 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
fi
new_conf="# Written by fedmpi .ci/slurm-up.sh: a $NODES-node test cluster. Edits are overwritten.
ClusterName=fedmpi
SlurmctldHost=$ctld_host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=15
CryptoType=crypto/munge
StateSaveLocation=$STATE_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
MinJobAge=3600
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
$node_conf"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
slurmd_pid_file() {
    if [ "$NODES" = 2 ]; then echo "$RUN_DIR/slurmd-$1.pid"; else echo "$RUN_DIR/slurmd.pid"; fi
}

if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    running=0
    alive "$RUN_DIR/slurmctld.pid" && running=1
    for f in "$RUN_DIR"/slurmd*.pid; do alive "$f" && running=1; done
    if [ "$running" = 1 ]; then
        # `scontrol reconfigure` does not apply everything (AuthInfo is read at start-up).
        log "config changed: stopping the running daemons first"
        SLURM_DOWN_KEEP_MUNGE=1 bash "$(dirname "$0")/slurm-down.sh"
    fi
    log "writing $CONF"
    printf '%s\n' "$new_conf" > "$CONF"
fi

# --- 4. the nodes' network ----------------------------------------------------------------
# Each piece is made only if missing and recorded in $NET_DIR when this script made it,
# so that slurm-down.sh removes exactly that.
if [ "$NODES" = 2 ]; then
    mkdir -p "$NET_DIR"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "creating bridge $BRIDGE ($SUBNET.1/24)"
        ip link add "$BRIDGE" type bridge
        echo "$BRIDGE" > "$NET_DIR/bridge"
        ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for i in 1 2; do
        ns=fn$i
        if [ ! -e "/run/netns/$ns" ]; then
            log "creating network namespace $ns (n$i, $SUBNET.$((i + 1)))"
            ip netns add "$ns"
            echo "$ns" >> "$NET_DIR/netns"
        fi
        if ! ip link show "fnv$i" >/dev/null 2>&1; then
            ip link add "fnv$i" type veth peer name eth0 netns "$ns"
            echo "fnv$i" >> "$NET_DIR/veth"
            ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
        fi
        ip link set "fnv$i" master "$BRIDGE"
        ip link set "fnv$i" up
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
    # The nodes' /etc/hosts: the machine's, plus the cluster's names.
    { cat /etc/hosts
      echo "# fedmpi two-node test cluster (.ci/slurm-up.sh)"
      echo "$SUBNET.2 n1"
      echo "$SUBNET.3 n2"
    } > "$NET_DIR/hosts"
fi

# --- 5. daemons ---------------------------------------------------------------------------
if ! alive "$RUN_DIR/slurmctld.pid"; then
    # -c: forget jobs saved by an earlier controller (a killed session's test jobs would
    # otherwise come back as zombies); this is a throwaway test cluster.
    log "starting slurmctld"
    slurmctld -c || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
fi
for node in "${NODE_NAMES[@]}"; do
    alive "$(slurmd_pid_file "$node")" && continue
    log "starting slurmd $node"
    if [ "$NODES" = 2 ]; then
        # slurmd daemonizes inside the namespaces and writes $RUN_DIR/slurmd-$node.pid
        # shellcheck disable=SC2016
        nsenter --net="/run/netns/fn${node#n}" \
            unshare --uts --ipc --mount --propagation private \
            sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -N "$2"' \
            sh "$NET_DIR/hosts" "$node" \
            || die "slurmd $node failed to start (see $LOG_DIR/slurmd-$node.log)"
    else
        slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
    fi
done

# --- 6. wait for idle nodes (bounded) -------------------------------------------------
deadline=$((start + TIMEOUT))
for node in "${NODE_NAMES[@]}"; do
    state=""
    while :; do
        state=$(sinfo -h -n "$node" -o '%t' 2>/dev/null | head -n1 || true)
        case "$state" in
            idle|mix|alloc) break ;;  # mix/alloc: already running jobs, also usable
            down*|drain*|fail*)
                # A node left down by an earlier run (e.g. killed daemons): return it.
                scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "node $node state: '${state:-no answer}'"
            tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR"/slurmd*.log >&2 2>/dev/null || true
            die "node $node not idle after ${TIMEOUT}s (logs in $LOG_DIR)"
        fi
        sleep 1
    done
    # The saved node state can read `idle` before slurmd has registered: prove the whole
    # chain (munge, slurmctld, slurmd, step launch) with a one-task step on this node.
    left=$(( deadline - $(date +%s) )); [ "$left" -ge 5 ] || left=5
    got=$(timeout "$left" srun --immediate="$left" -w "$node" -N1 -n1 -t1 hostname -s) \
        || die "node $node looks $state but a test step failed (logs in $LOG_DIR)"
    [ "$NODES" = 1 ] || [ "$got" = "$node" ] || die "a step on node $node ran on host '$got'"
done
log "node(s) ${NODE_NAMES[*]} ready in $(( $(date +%s) - start ))s"
