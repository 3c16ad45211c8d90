#!/usr/bin/env bash
# A real Slurm cluster (with accounting) on one machine for orch's Slurm tests and CI. Run as root.
#
#   tests/slurm/start-cluster.sh          install if missing, configure, start, wait until usable
#
# Idempotent: when every node is up and sacct answers, it exits 0 at once. No systemd:
# every daemon is started directly (munged, mariadbd, slurmdbd, slurmctld, slurmd), so it works
# in containers and CI machines. Everything runs as root (SlurmUser=root): a throwaway test cluster.
# Nodes: this host, and two emulated nodes `orchn1`/`orchn2` (two more slurmd processes on this
# machine, `slurmd -N <name>`, each on its own port, sharing the same cores).
# Partitions: `debug` (default) and `second` (this host: to check that a stage's partition reaches
# sbatch) and `multi` (orchn1 + orchn2: multi-node jobs); account `orchtest` (for --slurm-account).
# Logs: /var/log/slurm/*.log (slurmd-<node>.log per node), /var/log/slurm/mariadb.log.
set -euo pipefail

CLUSTER=orchtest
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))  # 80% of RAM, for --mem requests
EMULATED=(orchn1 orchn2)  # partition `multi`: slurmd -N <name> on ports 17001, 17002
DB_PASS=orch-slurm-test
CONF=/etc/slurm
LOGS=/var/log/slurm

T0=$(date +%s%N)
say() {
    local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
    printf 'start-cluster [%d.%03ds]: %s\n' $((ms / 1000)) $((ms % 1000)) "$*" >&2
}
die() {
    say "ERROR: $*"
    for f in "$LOGS"/slurmctld.log "$LOGS"/slurmd-*.log "$LOGS"/slurmdbd.log "$LOGS"/mariadb.log; do
        [ -f "$f" ] && { say "--- tail of $f"; tail -n 20 "$f" >&2; }
    done
    exit 1
}
# pid_alive PID: it runs (a zombie, left by a daemon forking itself away, does not)
pid_alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]; }
running() { local pid; for pid in $(pgrep -x "$1"); do pid_alive "$pid" && return 0; done; return 1; }
# alive PIDFILE: the daemon that wrote PIDFILE still runs
alive() { [ -s "$1" ] && pid_alive "$(cat "$1")"; }
slurmd_running() { alive "/run/slurm/slurmd-$1.pid"; }  # slurmd_running NODE
all_slurmd() { for node in "$HOST" "${EMULATED[@]}"; do slurmd_running "$node" || return 1; done; }
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}
# up: idle, or running jobs (a second call while tests run)
node_up() { sinfo -h -N -n "$1" -o %t 2>/dev/null | grep -Eqx 'idle|mix|alloc|comp'; }  # node_up NODE
all_up() { for node in "$HOST" "${EMULATED[@]}"; do node_up "$node" || return 1; done; }
usable() { all_up && sacct -n -X -S now-1minutes >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

# (only ask the daemons when they run: sinfo waits ~10 s for a controller that is not there)
if command -v sinfo >/dev/null && running slurmctld && all_slurmd && running slurmdbd && usable; then
    say "already running (nodes $HOST ${EMULATED[*]} up, sacct answers)"
    exit 0
fi

# -- install -------------------------------------------------------------------------------
missing=()
for pkg in slurm-wlm munge slurmdbd mariadb-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages start their daemons on install where they can (an init script, no systemd here):
    # forbid it for the install, so that whatever the machine, this script alone starts them.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- configure -----------------------------------------------------------------------------
mkdir -p "$CONF" "$LOGS" /var/lib/slurm/slurmctld /run/slurm /run/munge /run/mysqld
for node in "$HOST" "${EMULATED[@]}"; do mkdir -p "/var/lib/slurm/slurmd/$node"; done
OLD_CONF=$(cat "$CONF/slurm.conf" 2>/dev/null || true)
cat >"$CONF/slurm.conf" <<EOF
# Written by orch tests/slurm/start-cluster.sh: a test cluster on one machine (3 nodes, 2 emulated).
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MaxArraySize=1001
MinJobAge=300
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=${EMULATED[0]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=${EMULATED[1]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=second Nodes=$HOST MaxTime=INFINITE State=UP
PartitionName=multi Nodes=${EMULATED[0]},${EMULATED[1]} MaxTime=INFINITE State=UP
EOF
if [ -n "$OLD_CONF" ] && [ "$OLD_CONF" != "$(cat "$CONF/slurm.conf")" ]; then
    # nodes were added or changed (e.g. the single-node layout of an older version of this script):
    # slurmctld and the slurmds read them only when they start. Stopped by their pid files.
    for pidfile in /run/slurm/slurmctld.pid /run/slurm/slurmd.pid /run/slurm/slurmd-*.pid; do
        if alive "$pidfile"; then
            pid=$(cat "$pidfile")
            say "configuration changed: stopping the daemon of $pidfile"
            kill "$pid"
            wait_for 30 "the daemon of $pidfile to stop" eval "! pid_alive $pid"
        fi
    done
fi
cat >"$CONF/slurmdbd.conf" <<EOF
# Written by orch tests/slurm/start-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurm/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$CONF/slurmdbd.conf"

# -- munge ---------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
if ! running munged; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
fi
wait_for 10 "munge to answer" sh -c 'munge -n | unmunge'

# -- mariadb (slurmdbd's storage) ------------------------------------------------------------
chown mysql:mysql /run/mysqld
if ! running mariadbd && ! running mysqld; then
    say "starting mariadb"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1 &
fi
wait_for 60 "mariadb to answer" mariadb-admin --socket=/run/mysqld/mysqld.sock ping
mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# -- slurmdbd, the cluster and account records -----------------------------------------------
if ! running slurmdbd; then
    say "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start"
fi
wait_for 60 "slurmdbd to answer" sacctmgr -n list cluster
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n -P list account format=account | grep -qx orchtest || sacctmgr -i add account orchtest cluster="$CLUSTER" >/dev/null
sacctmgr -n -P list user format=user | grep -qx root || sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null
sacctmgr -n -P list assoc user=root format=account | grep -qx orchtest \
    || sacctmgr -i add user root account=orchtest cluster="$CLUSTER" >/dev/null

# -- slurmctld, slurmd -----------------------------------------------------------------------
if ! running slurmctld; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start"
fi
wait_for 30 "slurmctld to answer" scontrol ping
if ! slurmd_running "$HOST"; then
    say "starting slurmd"
    slurmd || die "slurmd did not start"
fi
for node in "${EMULATED[@]}"; do
    if ! slurmd_running "$node"; then
        say "starting slurmd -N $node"
        slurmd -N "$node" || die "slurmd -N $node did not start"
    fi
done
for node in "$HOST" "${EMULATED[@]}"; do
    # A node left DOWN/DRAINED by an earlier crash of this cluster: bring it back.
    if sinfo -h -N -n "$node" -o %t | grep -Eq 'down|drain'; then
        scontrol update nodename="$node" state=resume || say "could not resume node $node"
    fi
    wait_for 60 "node $node to be up" node_up "$node"
done
wait_for 60 "sacct to answer" sacct -n -X -S now-1minutes
say "ready: cluster $CLUSTER, nodes $HOST, ${EMULATED[*]} ($CPUS CPUs, ${MEM_MB} MB each);" \
    "partitions debug (default) and second: $HOST; multi: ${EMULATED[*]}"
