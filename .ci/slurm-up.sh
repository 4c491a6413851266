#!/usr/bin/env bash
# Start a one-node Slurm on this machine (as root, no systemd), for tests/slurm.
#
# Idempotent: installs slurm-wlm + munge only if missing, writes the config only if
# it changed, starts each daemon only if it is not already answering, then waits
# (bounded) until `sinfo` shows the node idle. Stop everything with .ci/slurm-down.sh.
#
# Why these settings (see shared/SLURM-NOTES.md):
#   - proctrack/linuxproc + task/none: the cgroup plugins make slurmd fail in containers;
#   - CPUs=16 + SlurmdParameters=config_overrides: more slots than the 2 real cores, so a
#     3-rank job (and two array tasks) fit on a small machine;
#   - JobRequeue=1: `scontrol requeue` and --requeue work (the requeue test needs it);
#   - AuthInfo=cred_expire=15: a requeued job may start again cred_expire+1 s after the
#     requeue (default 120 s: too slow for a test). Releasing it earlier by hand
#     (`scontrol update StartTime=now`) fails: "Job credential revoked";
#   - MinJobAge=3600: finished jobs stay visible to `scontrol show job` for an hour,
#     because there is no accounting daemon (no sacct) here.
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

TIMEOUT=${SLURM_UP_TIMEOUT:-60}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
start=$(date +%s)

log() { echo "slurm-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# --- 1. packages ------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
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
new_conf=$(cat <<EOF
# Written by fedmpi .ci/slurm-up.sh: a one-node test cluster. Edits are overwritten.
ClusterName=fedmpi
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=15
CryptoType=crypto/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
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
NodeName=$HOST CPUs=16 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    log "writing $CONF"
    printf '%s\n' "$new_conf" > "$CONF"
    conf_changed=1
fi

# --- 4. daemons ---------------------------------------------------------------------------
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$conf_changed" = 1 ] && { alive "$RUN_DIR/slurmctld.pid" || alive "$RUN_DIR/slurmd.pid"; }; then
    # `scontrol reconfigure` does not apply everything (AuthInfo is read at start-up).
    log "config changed: restarting the running daemons"
    SLURM_DOWN_KEEP_MUNGE=1 bash "$(dirname "$0")/slurm-down.sh"
fi
if ! alive "$RUN_DIR/slurmctld.pid"; then
    # -c: forget jobs saved by an earlier controller (a killed session's test jobs would
    # otherwise come back as zombies); this is a throwaway test cluster.
    log "starting slurmctld"
    slurmctld -c || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
fi
if ! alive "$RUN_DIR/slurmd.pid"; then
    log "starting slurmd"
    slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
fi

# --- 5. wait for an idle node (bounded) -----------------------------------------------
deadline=$((start + TIMEOUT))
state=""
while :; do
    state=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mix|alloc) break ;;  # mix/alloc: already running jobs, also usable
        down*|drain*|fail*)
            # A node left down by an earlier run (e.g. killed daemons): return it.
            scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "node state: '${state:-no answer}'"
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
        die "node $HOST not idle after ${TIMEOUT}s (logs in $LOG_DIR)"
    fi
    sleep 1
done
# The saved node state can read `idle` before slurmd has registered: prove the whole
# chain (munge, slurmctld, slurmd, step launch) with a one-task step.
left=$(( deadline - $(date +%s) )); [ "$left" -ge 5 ] || left=5
timeout "$left" srun --immediate="$left" -N1 -n1 -t1 true \
    || die "node $HOST looks $state but a test step failed (logs in $LOG_DIR)"
log "node $HOST is $state; ready in $(( $(date +%s) - start ))s"
