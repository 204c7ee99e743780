#!/usr/bin/env bash
# slurm-local.sh start|stop|status: a single-node Slurm cluster on this machine, for the `slurm` tests
# and for trying `pytest-heavy split N --slurm` without a site cluster.
#
# start (as root) installs Debian's slurm-wlm and munge when they are missing, writes a munge key and
# /etc/slurm/slurm.conf (one node: this host with its CPUs and memory, one partition `heavy`, no
# accounting, no cgroups), starts munged, slurmctld and slurmd directly (no systemd), and waits until
# `sinfo` shows the node idle. It is idempotent: a running cluster is left as it is. The node also
# declares two count-only GPUs (gres without device files) so that `--gres=gpu:K` requests can be
# scheduled here (empty files stand in for their devices; nothing is bound to them).
# Time limits are enforced quickly (OverTimeLimit=0, KillWait=2): a task over `--time=1` is ended
# within about 30 s of its minute (slurmctld checks limits every 30 s).
# stop ends the daemons this script started (by their pid files); status prints `sinfo` and exits 0
# when the node is up.
set -uo pipefail
cmd="${1:-status}"
conf_dir=/etc/slurm
conf="$conf_dir/slurm.conf"
run_dir=/run/slurm-local
log_dir=/var/log/slurm
spool=/var/spool/slurm-local
node="$(hostname -s)"

say() { echo "slurm-local: $*" >&2; }

node_up() {
  # idle, mixed or allocated: the node takes jobs (a node still booting says idle* or down)
  [ "$(sinfo -h -n "$node" -o '%T' 2>/dev/null | head -1)" ] || return 1
  sinfo -h -n "$node" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)$'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "slurm-wlm and munge are not installed (install them as root with apt-get)"; return 1
  fi
  say "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local mem
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MiB, leaving 1 GiB to the OS
  mkdir -p "$conf_dir" "$run_dir" "$log_dir" "$spool/ctld" "$spool/d"
  cat >"$conf.new" <<EOF
# written by scripts/slurm-local.sh: a single-node cluster for tests
ClusterName=heavy-local
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$run_dir/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
OverTimeLimit=0
KillWait=2
MinJobAge=600
DefMemPerCPU=1024
GresTypes=gpu
NodeName=$node CPUs=$(nproc) RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=heavy Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  # Slurm drops a GPU without a device file; empty files stand in (task/none binds nothing to them).
  touch "$run_dir/gpu0" "$run_dir/gpu1"
  echo "NodeName=$node Name=gpu File=$run_dir/gpu[0-1]" >"$conf_dir/gres.conf.new"
  # Rewrite only when changed, so that a running cluster's config is not touched for nothing.
  for f in "$conf" "$conf_dir/gres.conf"; do
    if cmp -s "$f.new" "$f"; then rm -f "$f.new"; else mv "$f.new" "$f"; fi
  done
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey -c -f -k /etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c 'munged' 2>/dev/null || munged --force
  else
    munged --force
  fi
}

start() {
  local t0=$SECONDS
  install || return 1
  if node_up; then say "running (node $node up)"; return 0; fi
  write_conf
  start_munge || { say "munged did not start"; return 1; }
  alive "$run_dir/slurmctld.pid" || slurmctld || { say "slurmctld did not start: see $log_dir/slurmctld.log"; return 1; }
  alive "$run_dir/slurmd.pid" || slurmd || { say "slurmd did not start: see $log_dir/slurmd.log"; return 1; }
  for _ in $(seq 1 60); do
    if node_up; then say "node $node up in $((SECONDS - t0))s"; return 0; fi
    # A node left down by an earlier stop comes back once its slurmd registers; resume it if not.
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  say "node $node not up after 60s: see $log_dir/slurmctld.log and $log_dir/slurmd.log"
  sinfo >&2 || true
  return 1
}

stop() {
  local f
  for f in "$run_dir/slurmd.pid" "$run_dir/slurmctld.pid"; do
    if alive "$f"; then kill "$(cat "$f")"; fi
  done
  for _ in $(seq 1 20); do
    alive "$run_dir/slurmd.pid" || alive "$run_dir/slurmctld.pid" || { say "stopped"; return 0; }
    sleep 0.5
  done
  say "daemons still running after 10s"; return 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) if node_up; then sinfo; else say "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
