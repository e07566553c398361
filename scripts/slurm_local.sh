#!/usr/bin/env bash
# A one-host Slurm cluster from Debian's packages (munge, slurmctld, slurmd) for the Slurm tests and CI: the
# daemons start directly (no systemd), as root, with config, state, spool and logs under $MONTA_SLURM_DIR.
# Usage: slurm_local.sh start|stop|status|env. start is idempotent; clients need SLURM_CONF (`env` prints it).
set -euo pipefail

DIR=${MONTA_SLURM_DIR:-/tmp/monta-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
# Ports of their own, so a site's Slurm on the default 6817/6818 is left alone.
MIN_CPUS=${MONTA_SLURM_MIN_CPUS:-8}
CPUS=$(nproc); [ "$CPUS" -ge "$MIN_CPUS" ] || CPUS=$MIN_CPUS
CTLD_PORT=${MONTA_SLURM_CTLD_PORT:-6917}
SLURMD_PORT=${MONTA_SLURM_SLURMD_PORT:-6918}
export SLURM_CONF=$CONF

die() { echo "slurm_local: $*" >&2; exit 1; }
log() { echo "slurm_local: $*"; }

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { [ -f "$CONF" ] && scontrol ping 2>/dev/null | grep -q "is UP"; }
# A process of the pid file that is alive: not gone, not a zombie (a container's init may never reap one).
pid_alive() {
  local st
  [ -f "$1" ] && st=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) && [ -n "$st" ] && [ "${st:0:1}" != Z ]
}
# daemon NAME CMD...: start a daemon with stdio on $DIR/log/NAME.out and no other descriptor of ours: one it
# inherited (a caller's pipe) would stay open for its life, and CTest, say, would wait for that test's output.
daemon() {
  local name=$1; shift
  "$@" </dev/null >"$DIR/log/$name.out" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- ||
    die "$name did not start: $(tail -n 1 "$DIR/log/$name.out") (see $DIR/log/)"
}
node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

write_conf() {
  # The node declares this machine's CPUs, at least $MIN_CPUS: oversubscribing the cores, so the README's batch
  # script (--ntasks-per-node, which cons_tres refuses to combine with --overcommit beyond the CPUs) and srun -n 4
  # run on 2 cores; config_overrides keeps slurmd from draining the node for having fewer. OverSubscribe=FORCE
  # lets jobs share CPUs. GresTypes=gpu makes the script's --gpus-per-node valid (the tests ask for 0). linuxproc
  # tracks tasks without cgroups (none in a container); task/none binds nothing.
  mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log "$DIR"/run
  cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-host cluster for monta's Slurm tests.
ClusterName=monta-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
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
SwitchType=switch/none
GresTypes=gpu
MpiDefault=none
SchedulerType=sched/backfill
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=60
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
}

start_munge() {
  munge_ok && return 0
  id munge >/dev/null 2>&1 || die "munge is not installed (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  daemon munged runuser -u munge -- /usr/sbin/munged
  touch "$DIR/run/munged.ours"
  for _ in $(seq 1 50); do munge_ok && return 0; sleep 0.1; done
  die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd launches tasks as any user)"
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null ||
    die "Slurm is not installed (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
  mkdir -p "$DIR"/run "$DIR"/log
  start_munge
  if ! ctld_ok; then
    # A fresh controller and slurmd: no state from an earlier session (jobs of processes long gone).
    local f
    for f in slurmd slurmctld; do
      if pid_alive "$DIR/run/$f.pid"; then kill "$(cat "$DIR/run/$f.pid")"; sleep 1; fi
    done
    rm -rf "$DIR/state" "$DIR/spool"
    write_conf
    daemon slurmctld slurmctld -f "$CONF" -i
    for _ in $(seq 1 100); do ctld_ok && break; sleep 0.1; done
    ctld_ok || die "slurmctld does not answer scontrol ping (see $DIR/log/slurmctld.log)"
    log "started slurmctld"
  fi
  if ! pid_alive "$DIR/run/slurmd.pid"; then
    daemon slurmd slurmd -f "$CONF"
    log "started slurmd"
  fi
  local state=""
  for _ in $(seq 1 300); do
    state=$(node_state)
    case $state in
      idle|mix|alloc) log "node $NODE is $state (SLURM_CONF=$CONF)"; return 0 ;;
      down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  die "node $NODE did not become idle within 30 s (sinfo state '${state:-none}'; see $DIR/log/slurmd.log)"
}

stop() {
  local f
  for f in slurmd slurmctld; do
    if pid_alive "$DIR/run/$f.pid"; then
      kill "$(cat "$DIR/run/$f.pid")"
      for _ in $(seq 1 50); do pid_alive "$DIR/run/$f.pid" || break; sleep 0.1; done
      log "stopped $f"
    fi
  done
  if [ -f "$DIR/run/munged.ours" ]; then
    [ -f /run/munge/munged.pid ] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null && log "stopped munged"
    rm -f "$DIR/run/munged.ours"
  fi
}

status() {
  if ctld_ok && pid_alive "$DIR/run/slurmd.pid"; then
    log "up: node $NODE is $(node_state) (SLURM_CONF=$CONF)"
  else
    log "down"
    return 1
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
