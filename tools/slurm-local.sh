#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/slurm.rs and trying `--launcher slurm`.
#
#   eval "$(tools/slurm-local.sh start)"   # installs slurm-wlm + munge if missing, starts munged,
#                                          # slurmctld and slurmd; prints `export SLURM_CONF=...`
#   tools/slurm-local.sh stop
#
# Needs root (the daemons run as root). The config and state live in $SLURM_LOCAL_DIR (default
# /tmp/pipeline-slurm): ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# SelectType=select/cons_tres, no accounting database (sacct is unavailable; `pipeline status`
# falls back on squeue, manifests and task logs).
set -euo pipefail
dir="${SLURM_LOCAL_DIR:-/tmp/pipeline-slurm}"
conf="$dir/slurm.conf"

log() { echo "slurm-local: $*" >&2; }

start() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        log "installing slurm-wlm and munge"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    mkdir -p "$dir/state" "$dir/spool" /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    if ! pgrep -x munged >/dev/null; then
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- /usr/sbin/munged
        else
            /usr/sbin/munged --force
        fi
    fi
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat >"$conf" <<CONF
ClusterName=pipeline
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-6817}
SlurmdPort=${SLURM_LOCAL_D_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
DefMemPerCPU=2048
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$conf"
    if ! scontrol ping 2>/dev/null | grep -q UP; then
        /usr/sbin/slurmctld -f "$conf"
    fi
    if ! pgrep -x slurmd >/dev/null; then
        /usr/sbin/slurmd -f "$conf"
    fi
    for i in $(seq 1 60); do
        # A node left down by an earlier daemon comes back.
        if [ "$i" = 10 ]; then
            scontrol update nodename="$host" state=resume 2>/dev/null || true
        fi
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "up: $(sinfo -h -o '%N %c CPUs %t')"
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    log "the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log"
    sinfo >&2 || true
    return 1
}

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 1 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
        sleep 0.2
    done
    log "stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
