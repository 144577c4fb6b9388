#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, to test profiles/slurm (tests/test_slurm.py runs it).
#
#   scripts/slurm_cluster.sh start    # install Debian's packages if missing, start what is not running
#   scripts/slurm_cluster.sh status   # exit 0 when the cluster answers, and print SLURM_CONF
#   scripts/slurm_cluster.sh stop     # stop exactly the daemons this script started, nothing else
#   scripts/slurm_cluster.sh missing  # print the Debian packages start would install (none: empty line)
#
# Needs root on Debian or Ubuntu; no systemd: each daemon is started here and its PID recorded in
# $STATE/started. Everything else lives in $STATE too (configs, logs, spool, the accounting database);
# SLURM commands find the cluster through SLURM_CONF=$STATE/slurm.conf, or on this machine through
# slurmd's /run/slurm/conf. /etc/slurm is not touched; /etc/munge/munge.key is created if missing.
# Job accounting (slurmdbd + MariaDB) is there because the Snakemake plugin asks sacct for job states.
set -euo pipefail

STATE=${PEFTBENCH_SLURM_DIR:-/tmp/peftbench-slurm}
CLUSTER=peftbench
DB_PORT=${PEFTBENCH_SLURM_DB_PORT:-3316}   # not 3306: leave a system MariaDB alone
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
HOST=$(hostname -s)
export SLURM_CONF=$STATE/slurm.conf

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

# running NAME PID: that PID is still the daemon NAME (not a reused PID of something else)
running() { [[ -n ${2:-} && $(cat "/proc/$2/comm" 2>/dev/null) == "$1" ]]; }

recorded_pid() { # the PID this script recorded for a daemon, if it still runs
    local pid
    pid=$(awk -v name="$1" '$1 == name {print $2}' "$STATE/started" 2>/dev/null | tail -1)
    running "$1" "$pid" && echo "$pid" || true
}

record() { echo "$1 $2" >>"$STATE/started"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what did not come up within ${seconds} s (logs in $STATE)"
}

missing_packages() { # the packages of PACKAGES not installed, one line
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    echo "${missing[*]}"
}

install_packages() {
    local missing
    read -r -a missing <<<"$(missing_packages)"
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install SLURM, munge and MariaDB yourself"
    log "installing ${missing[*]}"
    # policy-rc.d 101: packages must not try to start services (there is no init system to ask)
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1; fi
    apt-get update -qq >"$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
        || { [[ -n $created_policy ]] && rm -f "$policy"; die "apt-get install failed (see $STATE/apt.log)"; }
    [[ -n $created_policy ]] && rm -f "$policy"
    return 0
}

write_configs() {
    mkdir -p "$STATE"/{ctld,spool,db}
    local cpus memory_mb
    # The node advertises at least the workflow's own requests (train: 4 threads, 32 GB), so the test
    # submits the profile's real requests; config_overrides lets slurmd register with fewer, and
    # task/none enforces no limit.
    cpus=$(nproc); ((cpus < 8)) && cpus=8
    memory_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo); ((memory_mb < 65536)) && memory_mb=65536
    cat >"$STATE/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
ReturnToService=2
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
EOF
    cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
EOF
    chmod 600 "$STATE/slurmdbd.conf"  # slurmdbd refuses a readable file holding a password
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return  # a munged is already running (ours or the system's): use it
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    rm -f /run/munge/munged.pid  # a stale pidfile from an earlier run blocks a restart
    runuser -u munge -- /usr/sbin/munged >"$STATE/munged.out" 2>&1
    wait_for 10 munged munge_works
    record munged "$(cat /run/munge/munged.pid)"
}

sql() { mariadb --socket="$STATE/mysqld.sock" -u root -e "$1"; }

start_mariadb() {
    [[ -n $(recorded_pid mariadbd) ]] && return
    if [[ ! -d $STATE/db/mysql ]]; then
        mariadb-install-db --user=root --datadir="$STATE/db" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/mariadb-install.log)"
    fi
    rm -f "$STATE/mysqld.pid" "$STATE/mysqld.sock"
    mariadbd --no-defaults --user=root --datadir="$STATE/db" --socket="$STATE/mysqld.sock" \
        --pid-file="$STATE/mysqld.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --log-error="$STATE/mariadb.log" </dev/null >/dev/null 2>&1 &
    record mariadbd $!
    wait_for 30 MariaDB sql "SELECT 1"
    sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_daemon() { # start_daemon NAME PIDFILE COMMAND...
    local name=$1 pidfile=$2
    shift 2
    [[ -n $(recorded_pid "$name") ]] && return
    rm -f "$pidfile"
    "$@" </dev/null >"$STATE/$name.out" 2>&1  # each daemonizes and writes its pidfile
    wait_for 15 "$name's pidfile" test -s "$pidfile"
    record "$name" "$(cat "$pidfile")"
}

node_ready() { # a node left drained or down by an earlier run is put back to work
    local state
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
    [[ $state =~ drain|down|inval ]] && scontrol update nodename="$HOST" state=resume >/dev/null 2>&1
    [[ $state =~ ^(idle|mixed|allocated)$ ]]
}

cluster_answers() {
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && sacct -n -X -S now >/dev/null 2>&1
}

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"
    mkdir -p "$STATE"
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_daemon slurmdbd "$STATE/slurmdbd.pid" slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    # An account for the test to name (profiles/slurm reads SBATCH_ACCOUNT), with this user in it.
    sacctmgr -n list account format=account | grep -qw "$CLUSTER" || sacctmgr -i add account "$CLUSTER" >/dev/null
    sacctmgr -n list assoc user="$(id -un)" format=account | grep -qw "$CLUSTER" \
        || sacctmgr -i add user "$(id -un)" account="$CLUSTER" >/dev/null
    start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld -f "$SLURM_CONF"
    # Configless, as on many real clusters: slurmd fetches the config from slurmctld and caches it in
    # /run/slurm/conf, where the srun inside each job finds it (the plugin strips SLURM_CONF there).
    start_daemon slurmd "$STATE/slurmd.pid" env -u SLURM_CONF slurmd --conf-server 127.0.0.1
    wait_for 60 "the node" node_ready
    wait_for 30 "the cluster" cluster_answers
    log "up; use it with: export SLURM_CONF=$SLURM_CONF"
}

stop() {
    [[ -f $STATE/started ]] || { log "nothing was started here"; return; }
    local name pid
    # Signal in reverse order (the node before the controller, the database last), then wait for each.
    tac "$STATE/started" | while read -r name pid; do
        running "$name" "$pid" && kill "$pid" && log "stopping $name ($pid)" || true
    done
    tac "$STATE/started" | while read -r name pid; do
        for _ in $(seq 100); do running "$name" "$pid" || break; sleep 0.1; done
        running "$name" "$pid" && kill -9 "$pid" || true
    done
    rm -f "$STATE/started" "$STATE"/*.pid
    # slurmd's link to its cached config, if it points here
    [[ $(readlink /run/slurm/conf) == "$STATE"/* ]] && rm -f /run/slurm/conf
    return 0
}

status() {
    if cluster_answers; then
        echo "SLURM_CONF=$SLURM_CONF"
        sinfo
    else
        log "not running (SLURM_CONF=$SLURM_CONF)"
        return 1
    fi
}

case ${1:-} in
    start | stop | status) "$1" ;;
    missing) missing_packages ;;
    *) echo "usage: $0 start|stop|status|missing" >&2; exit 2 ;;
esac
