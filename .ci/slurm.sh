#!/usr/bin/env bash
# A one-node Slurm cluster for CI and tests: munge + slurmctld + slurmd on this machine.
#
#   .ci/slurm.sh start [DIR]   start (or reuse) the cluster; prints `export SLURM_CONF=DIR/slurm.conf`
#   .ci/slurm.sh stop  [DIR]   stop the daemons this script started (by pid)
#   .ci/slurm.sh status [DIR]  exit 0 when the controller answers and the node is idle/allocated
#
# Or sourced (scripts/test.sh): `source .ci/slurm.sh; slurm_start` starts it and exports
# SLURM_CONF into the calling shell; `slurm_stop` stops it.
#
# DIR defaults to $KIT_SLURM_DIR or /tmp/kit-slurm. Needs root (SlurmUser=root, munged runs
# as user munge) and the Debian packages slurm-wlm and munge. The hostname is not
# resolvable as a node name here, so slurmd runs with `-N localhost`.
# Idempotent: `start` on a running cluster only prints the SLURM_CONF line.
_kit_slurm_sourced=0
[[ "${BASH_SOURCE[0]}" != "$0" ]] && _kit_slurm_sourced=1
[[ $_kit_slurm_sourced == 1 ]] || set -euo pipefail

DIR=${KIT_SLURM_DIR:-/tmp/kit-slurm}
[[ $_kit_slurm_sourced == 1 ]] || DIR=${2:-$DIR}
CONF=$DIR/slurm.conf

log() { echo "slurm.sh: $*" >&2; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { command -v munge >/dev/null && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge || return 1
    chown munge:munge /run/munge /var/log/munge /var/lib/munge || return 1
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { log "munged did not start"; return 1; }
    # the daemon's own pid file: a pgrep here may still see the process it forked from
    cp /run/munge/munged.pid "$DIR/munged.pid" 2>/dev/null || pgrep -u munge -x munged | tail -1 >"$DIR/munged.pid" || true
    touch "$DIR/munged.ours"
}

# slurm_conf NAME=VALUE...: a CI test cluster's slurm.conf on stdout, up to its own lines (ports,
# timeouts, nodes), which the caller appends: this one-node cluster's and .ci/cluster.sh's (which
# sources this file for it), so both share one set of policies: root daemons, munge, linuxproc,
# cons_tres by core, no accounting, ended jobs kept an hour. Every name is required: title (the
# first comment), cluster (ClusterName), ctl (SlurmctldHost), state (StateSaveLocation), spool
# (SlurmdSpoolDir), pids (the pid files' directory), logs (the log files' directory), slurmd_log
# (slurmd's log file there), kill_wait (KillWait); a missing or empty one is refused (return 2,
# nothing printed), as is an unknown one.
slurm_conf() {
    local kv n title cluster ctl state spool pids logs slurmd_log kill_wait
    for kv in "$@"; do
        case ${kv%%=*} in
            title|cluster|ctl|state|spool|pids|logs|slurmd_log|kill_wait) local "$kv" ;;
            *) log "slurm_conf: unknown setting ${kv%%=*}"; return 2 ;;
        esac
    done
    for n in title cluster ctl state spool pids logs slurmd_log kill_wait; do
        [[ -n ${!n:-} ]] || { log "slurm_conf: setting $n is missing (give $n=VALUE)"; return 2; }
    done
    cat <<EOF
# $title
ClusterName=$cluster
SlurmctldHost=$ctl
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$pids/slurmctld.pid
SlurmdPidFile=$pids/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/$slurmd_log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
MinJobAge=3600
KillWait=$kill_wait
InactiveLimit=0
EOF
}

# write_conf: $CONF, whole or not at all (a failure returns 1 also when sourced, without set -e,
# and leaves no half file that a later `start` would take for a written one)
write_conf() {
    local mem
    mem=$(awk '/MemTotal/ {printf "%d", $2/1024*0.85}' /proc/meminfo) && [[ -n $mem ]] ||
        { log "cannot read MemTotal from /proc/meminfo"; return 1; }
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" || return 1
    {
        slurm_conf title="one-node test cluster written by .ci/slurm.sh" cluster=kitci ctl=localhost \
            state="$DIR/state" spool="$DIR/spool" pids="$DIR" logs="$DIR/log" slurmd_log=slurmd.log kill_wait=10 &&
            printf '%s\n' "SlurmctldPort=${KIT_SLURMCTLD_PORT:-6817}" "SlurmdPort=${KIT_SLURMD_PORT:-6818}" \
                "NodeName=localhost CPUs=$(nproc) RealMemory=$mem State=UNKNOWN" \
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.tmp" || { rm -f "$CONF.tmp"; log "could not write $CONF"; return 1; }
    mv "$CONF.tmp" "$CONF" || return 1
}

ready() {
    SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q UP &&
        SLURM_CONF=$CONF sinfo -h -N -o %t 2>/dev/null | grep -Eq '^(idle|alloc|mix)'
}

start() {
    [[ $(id -u) == 0 ]] || { log "needs root"; return 1; }
    command -v slurmctld >/dev/null || { log "slurmctld not installed (apt-get install slurm-wlm munge)"; return 1; }
    mkdir -p "$DIR" || return 1
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && ready; then
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    start_munge || return 1
    [[ -f $CONF ]] || write_conf || return 1
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF" -N localhost
    for _ in $(seq 100); do ready && break; sleep 0.2; done
    if ! ready; then
        # a node left DOWN by an earlier run: bring it back
        SLURM_CONF=$CONF scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
        for _ in $(seq 50); do ready && break; sleep 0.2; done
    fi
    if ! ready; then
        log "cluster did not come up; see $DIR/log/"
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        return 1
    fi
    echo "export SLURM_CONF=$CONF"
}

stop() {
    local f
    for f in slurmd slurmctld; do
        if alive "$DIR/$f.pid"; then
            kill "$(cat "$DIR/$f.pid")" || true
        fi
    done
    for _ in $(seq 50); do
        alive "$DIR/slurmd.pid" || alive "$DIR/slurmctld.pid" || break
        sleep 0.1
    done
    if [[ -f $DIR/munged.ours ]] && alive "$DIR/munged.pid"; then
        kill "$(cat "$DIR/munged.pid")" || true
        rm -f "$DIR/munged.ours"
    fi
}

slurm_start() {
    start >/dev/null || return 1
    export SLURM_CONF=$CONF
    log "one-node cluster up: SLURM_CONF=$CONF"
}

slurm_stop() { stop; }

if [[ $_kit_slurm_sourced == 0 ]]; then
    case ${1:-start} in
        start) start ;;
        stop) stop ;;
        status) ready ;;
        *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
    esac
fi
