#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests and for trying the array jobs locally.
#
#   slurm/local_cluster.sh up        install (if needed), configure and start munge + slurmctld + slurmd
#   slurm/local_cluster.sh down      stop the daemons this script started (by the PIDs in their pid files)
#   slurm/local_cluster.sh status    daemons, sinfo, squeue
#   slurm/local_cluster.sh env       print `export SLURM_CONF=...` (eval "$(slurm/local_cluster.sh env)")
#
# Idempotent: `up` on a running cluster changes nothing; `down` on a stopped one does nothing.
# Everything lives in $MORA_SLURM_DIR, munged included (its own socket there), so clusters with
# different dirs and ports run side by side (each test session starts its own) and never stop each
# other's daemons. `up` starts with an empty queue.
# Needs root (Debian/Ubuntu: apt-get installs slurm-wlm + munge; jobs run as root).
# Environment:
#   MORA_SLURM_DIR          state, spool, logs, pid files, slurm.conf   (default /tmp/mora-slurm)
#   MORA_SLURM_ACCOUNTING=1 also slurmdbd + a private MariaDB, so sacct works (default 0)
#   MORA_SLURM_PORT         slurmctld port; slurmd uses +1, slurmdbd +2, mariadb +3 (default 6817)
#   MORA_SLURM_REQUEUE_DELAY seconds a requeued job waits before it may start again (default 5; Slurm's 120)
# Exit status of `up`: 0 running, 3 Slurm cannot be installed here (tests skip on that), 1 other errors.
set -euo pipefail

DIR=${MORA_SLURM_DIR:-/tmp/mora-slurm}
ACCOUNTING=${MORA_SLURM_ACCOUNTING:-0}
PORT=${MORA_SLURM_PORT:-6817}
REQUEUE_DELAY=${MORA_SLURM_REQUEUE_DELAY:-5}
CONF=$DIR/etc/slurm.conf
CLUSTER=moralocal
MUNGE_DIR=$DIR/munge  # a munged of its own: clusters of different $MORA_SLURM_DIR never share a daemon
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2

log() { echo "[local_cluster] $*" >&2; }

pid_alive() {  # pid_alive FILE: the pid in FILE is a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

have_slurm() {
    local c cmds=(slurmctld slurmd sbatch squeue scontrol munged munge)
    [[ $ACCOUNTING == 1 ]] && cmds+=(slurmdbd sacctmgr mariadbd mariadb-install-db mariadb)
    for c in "${cmds[@]}"; do command -v "$c" >/dev/null || return 1; done
}

install_packages() {
    # what is missing, by the commands this script runs (a removed package can linger as config files)
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    if [[ $ACCOUNTING == 1 ]]; then
        command -v slurmdbd >/dev/null || missing+=(slurmdbd)
        command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null && command -v mariadb >/dev/null \
            || missing+=(mariadb-server)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "Slurm is not installed and cannot be installed here (needs root and apt-get): ${missing[*]}"
        return 3
    fi
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >"$DIR/apt.log" 2>&1; then
        apt-get update -q >>"$DIR/apt.log" 2>&1 || true
        if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$DIR/apt.log" 2>&1; then
            log "apt-get install ${missing[*]} failed; see $DIR/apt.log"
            tail -5 "$DIR/apt.log" >&2
            return 3
        fi
    fi
}

munge_ok() {
    munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

start_munge() {
    if pid_alive "$MUNGE_DIR/munged.pid" && munge_ok; then
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 700 "$MUNGE_DIR"
    runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
        --seed-file="$MUNGE_DIR/munged.seed" --log-file="$MUNGE_DIR/munged.log"
    for _ in $(seq 50); do
        munge_ok && return 0
        sleep 0.1
    done
    log "munged did not come up; see $MUNGE_DIR/munged.log"
    return 1
}

write_config() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it obeys OMP_NUM_THREADS
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$DIR"/{etc,run,log,state,spool}
    local acct="AccountingStorageType=accounting_storage/none"
    if [[ $ACCOUNTING == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$MUNGE_SOCKET"
    fi
    cat >"$CONF.tmp" <<EOF
# Written by slurm/local_cluster.sh: one node (this machine), one partition, jobs run as root.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$REQUEUE_DELAY
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=30
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_mariadb() {
    local sock=$DIR/run/mysqld.sock
    # a small database: a few MB of accounting, not MariaDB's 180 MB of default logs and buffers
    local small=(--innodb-log-file-size=4M --innodb-buffer-pool-size=16M --innodb-undo-tablespaces=0)
    if pid_alive "$DIR/run/mariadb.pid"; then return 0; fi
    if [[ ! -d $DIR/mysql/mysql ]]; then
        log "initialising a private MariaDB in $DIR/mysql"
        mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
            "${small[@]}" >"$DIR/log/mariadb-install.log" 2>&1
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --socket="$sock" --port=$((PORT + 3)) --bind-address=127.0.0.1 \
        --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" "${small[@]}" >/dev/null 2>&1 &
    for _ in $(seq 100); do
        mariadb --socket="$sock" -e 'select 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    mariadb --socket="$sock" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    if pid_alive "$DIR/run/slurmdbd.pid"; then return 0; fi
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    SLURM_CONF=$CONF slurmdbd  # reads slurmdbd.conf from the directory of $SLURM_CONF
    local deadline=$((SECONDS + 30))
    until SLURM_CONF=$CONF sacctmgr -n list cluster >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            log "slurmdbd does not answer; see $DIR/log/slurmdbd.log"
            return 1
        fi
        sleep 0.3
    done
    if ! SLURM_CONF=$CONF sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER"; then
        SLURM_CONF=$CONF sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

cluster_up() {
    pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" \
        && SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q UP
}

up() {
    mkdir -p "$DIR"
    chmod 755 "$DIR"  # munged runs as user munge and keeps its socket below it
    if cluster_up; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    install_packages || return $?
    have_slurm || { log "Slurm / munge (/ slurmdbd, MariaDB) commands still missing after the install"; return 3; }
    write_config
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    export SLURM_CONF=$CONF
    # -c: start with an empty queue (no jobs restored from an earlier session of this cluster)
    pid_alive "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
    pid_alive "$DIR/run/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 150); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "up: $(sinfo -h -o '%P %D %t %c CPUs') (SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 0.2
    done
    log "the node did not become idle; see $DIR/log/"
    sinfo -N -l >&2 || true
    tail -20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    return 1
}

stop_pidfile() {  # stop_pidfile NAME FILE: SIGTERM the pid in FILE, wait, SIGKILL if it lingers
    local name=$1 file=$2 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$file"
}

down() {
    if [[ -f $CONF ]] && pid_alive "$DIR/run/slurmctld.pid"; then
        # jobs still queued or running are cancelled first, and given a moment to go
        SLURM_CONF=$CONF scancel --user=root 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_pidfile slurmd "$DIR/run/slurmd.pid"
    stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
    stop_pidfile slurmdbd "$DIR/run/slurmdbd.pid"
    stop_pidfile mariadb "$DIR/run/mariadb.pid"
    stop_pidfile munged "$MUNGE_DIR/munged.pid"
    # job steps still alive after slurmd went (slurmstepd outlives it): ours carry our SLURM_CONF
    local pid
    for pid in $(pgrep -x slurmstepd 2>/dev/null); do
        if tr '\0' '\n' </proc/"$pid"/environ 2>/dev/null | grep -qx "SLURM_CONF=$CONF"; then
            log "stopping leftover slurmstepd ($pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

status() {
    local d f
    for d in munged slurmctld slurmd slurmdbd mariadb; do
        f=$DIR/run/$d.pid
        [[ $d == munged ]] && f=$MUNGE_DIR/munged.pid
        if pid_alive "$f"; then echo "$d: running (pid $(cat "$f"))"; else echo "$d: -"; fi
    done
    if cluster_up; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
    fi
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
