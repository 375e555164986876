#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for tests and for trying `hpcql submit`.
#
#   scripts/slurm-local.sh up       install (Debian: slurm-wlm, munge) if needed, configure, start; idempotent
#   scripts/slurm-local.sh down     stop the daemons (configuration and packages stay)
#   scripts/slurm-local.sh status   daemons, partition and node state; exit 0 only when the node is usable
#
# Needs root (it writes /etc/slurm and starts daemons) and Debian/Ubuntu packages.
# The node advertises HPCQL_SLURM_CPUS CPUs (default: max(4, nproc)) whatever the
# machine has, and the partition oversubscribes, so 4-rank jobs fit on a 2-core box.
# Daemon logs: /var/log/slurm-local/.
set -euo pipefail

CPUS="${HPCQL_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}"
PARTITION="${HPCQL_SLURM_PARTITION:-debug}"
NODE="$(hostname -s)"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm-local
STATE_DIR=/var/spool/slurm-local
MARK="# written by hpcql scripts/slurm-local.sh"

log() { echo "slurm-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [[ $EUID -eq 0 ]] || die "must run as root to install slurm-wlm and munge"
    command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge by hand"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" /run/munge
    local conf="$CONF_DIR/slurm.conf"
    if [[ -f "$conf" ]] && ! grep -qF "$MARK" "$conf"; then
        die "$conf exists and was not written by this script; refusing to replace it"
    fi
    local new
    new="$(cat <<EOF
$MARK
ClusterName=hpcql-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120): short for tests
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=/run/slurmctld-local.pid
SlurmdPidFile=/run/slurmd-local.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
)"
    if [[ ! -f "$conf" ]] || [[ "$(cat "$conf")" != "$new" ]]; then
        printf '%s\n' "$new" > "$conf"
        log "wrote $conf (node $NODE, $CPUS CPUs, partition $PARTITION)"
        RESTART=1
    fi
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    fi
    chown munge:munge /etc/munge/munge.key /run/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    mkdir -p /var/lib/munge /var/log/munge && chown munge:munge /var/lib/munge /var/log/munge 2>/dev/null || true
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "starting munged"
        if id munge >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged --force; fi
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # pidfile name
    if running "$1"; then
        local pid; pid="$(cat "$1")"
        log "stopping $2 (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$1"
}

node_ready() {
    local state
    state="$(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1)"
    [[ "$state" =~ ^(idle|mix|alloc|comp)$ ]]
}

cmd_up() {
    RESTART=0
    install_packages
    write_config
    start_munge
    if [[ $RESTART -eq 1 ]]; then
        stop_daemon /run/slurmd-local.pid slurmd
        stop_daemon /run/slurmctld-local.pid slurmctld
    fi
    running /run/slurmctld-local.pid || { log "starting slurmctld"; slurmctld -i; }
    for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
    running /run/slurmd-local.pid || { log "starting slurmd"; slurmd; }
    for _ in $(seq 150); do node_ready && break; sleep 0.2; done
    if ! node_ready; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        for _ in $(seq 50); do node_ready && break; sleep 0.2; done
    fi
    node_ready || { cmd_status || true; die "node $NODE is not ready (logs in $LOG_DIR)"; }
    srun --mpi=list 2>&1 | grep -q pmi2 || die "srun has no pmi2 plugin (srun --mpi=list)"
    log "up: partition $PARTITION, node $NODE with $CPUS CPUs; srun --mpi=pmi2 available"
}

cmd_down() {
    stop_daemon /run/slurmd-local.pid slurmd
    stop_daemon /run/slurmctld-local.pid slurmctld
    log "down (munged left running)"
}

cmd_status() {
    local ok=0
    running /run/slurmctld-local.pid && echo "slurmctld: running (pid $(cat /run/slurmctld-local.pid))" \
        || { echo "slurmctld: stopped"; ok=1; }
    running /run/slurmd-local.pid && echo "slurmd: running (pid $(cat /run/slurmd-local.pid))" \
        || { echo "slurmd: stopped"; ok=1; }
    if [[ $ok -eq 0 ]]; then
        sinfo -N -o '%N %P %t %c' 2>/dev/null || ok=1
        node_ready || ok=1
    fi
    return $ok
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
