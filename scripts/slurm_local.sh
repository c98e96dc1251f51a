#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for testing `hydra/launcher=slurm` (the tests
# marked `slurm` start it themselves; .ci/run runs them as root where apt works).
#   sudo scripts/slurm_local.sh start [overmemkill|cgroup]   # default: overmemkill
#   sudo scripts/slurm_local.sh status
#   sudo scripts/slurm_local.sh stop
# start installs Debian's slurm-wlm and munge with apt where they are missing, writes
# /etc/slurm/slurm.conf (refusing to replace one this script did not write), and starts munged,
# slurmctld and slurmd on loopback, without systemd. Memory over a job's --mem is enforced by
#   overmemkill: jobacct_gather samples each step's memory every second, and OverMemoryKill
#                kills the step (SIGKILL; the job ends OUT_OF_MEMORY);
#   cgroup:      task/cgroup with ConstrainRAMSpace (the kernel's OOM killer, inside the job's
#                memory cgroup). Needs a writable cgroup v1 memory hierarchy; see check_cgroup.
# stop cancels the jobs, then stops every daemon by the PID in its PID file. State and logs are in
# $SLURM_LOCAL_DIR (default /var/lib/vae-bench-slurm). Needs root. Debian/Ubuntu only.
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/var/lib/vae-bench-slurm}
CONF=/etc/slurm/slurm.conf
CGROUP_CONF=/etc/slurm/cgroup.conf
MARK="# written by vae-bench scripts/slurm_local.sh"
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid
NODE=$(hostname -s)

die() { echo "slurm_local.sh: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"; }

install_missing() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  { command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null \
    || missing+=(slurm-wlm)
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "${missing[*]} missing and there is no apt-get here"
  echo "slurm_local.sh: installing ${missing[*]} with apt"
  timeout 300 apt-get update -qq || die "apt-get update failed (no package registry?)"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

check_cgroup() {
  # SLURM 22.05 needs, for cgroup/v2, a cgroup2 file system at /sys/fs/cgroup with the memory
  # controller delegable; for cgroup/v1, a writable v1 memory hierarchy at /sys/fs/cgroup/memory.
  local probe=/sys/fs/cgroup/memory/vae-bench-slurm-probe
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    grep -qw memory /sys/fs/cgroup/cgroup.controllers \
      || die "cgroup mode: the cgroup v2 memory controller is not available here" \
             "(/sys/fs/cgroup/cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers));" \
             "use overmemkill"
    echo v2
    return
  fi
  [ -d /sys/fs/cgroup/memory ] \
    || die "cgroup mode: no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory and no" \
           "cgroup v2 at /sys/fs/cgroup; use overmemkill"
  mkdir "$probe" 2>/dev/null && echo 1G > "$probe/memory.limit_in_bytes" 2>/dev/null \
    || { rmdir "$probe" 2>/dev/null || true
         die "cgroup mode: cannot create a memory cgroup with a limit under" \
             "/sys/fs/cgroup/memory (a container without cgroup delegation?); use overmemkill"; }
  rmdir "$probe"
  echo v1
}

write_config() {
  local mode=$1 cgroup_version=${2:-}
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not replacing a real cluster's config"
  fi
  local cpus memory_mb
  cpus=$(nproc)
  # Leave 1 GB to the system, or SLURM drains the node when the kernel reports less.
  memory_mb=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
  {
    echo "$MARK ($mode mode); scripts/slurm_local.sh stop stops its daemons"
    echo "ClusterName=vaebench"
    echo "SlurmctldHost=$NODE(127.0.0.1)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "StateSaveLocation=$STATE/ctld"
    echo "SlurmdSpoolDir=$STATE/d"
    echo "SlurmctldPidFile=$CTLD_PID"
    echo "SlurmdPidFile=$SLURMD_PID"
    echo "SlurmctldLogFile=$STATE/slurmctld.log"
    echo "SlurmdLogFile=$STATE/slurmd.log"
    echo "SlurmctldPort=6817"
    echo "SlurmdPort=6818"
    echo "MpiDefault=none"
    echo "SwitchType=switch/none"
    echo "ReturnToService=2"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    # No accounting database: sacct answers nothing, as on many small clusters.
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "JobAcctGatherType=jobacct_gather/linux"
    echo "JobAcctGatherFrequency=task=1"
    # Ended jobs stay visible to squeue this long (s); KillWait: SIGTERM to SIGKILL on scancel.
    echo "MinJobAge=300"
    echo "KillWait=30"
    if [ "$mode" = overmemkill ]; then
      echo "ProctrackType=proctrack/linuxproc"
      echo "TaskPlugin=task/none"
      echo "JobAcctGatherParams=OverMemoryKill"
    else
      echo "ProctrackType=proctrack/cgroup"
      echo "TaskPlugin=task/cgroup"
    fi
    echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF"
  if [ "$mode" = cgroup ]; then
    { echo "$MARK"
      echo "CgroupPlugin=cgroup/$cgroup_version"
      echo "ConstrainRAMSpace=yes"
      echo "ConstrainSwapSpace=yes"
      echo "AllowedSwapSpace=0"; } > "$CGROUP_CONF"
  elif [ -e "$CGROUP_CONF" ] && grep -qF "$MARK" "$CGROUP_CONF"; then
    rm "$CGROUP_CONF"
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  alive "$MUNGE_PID" && return
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key
                                   chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- munged
  timeout 10 bash -c 'until munge -n </dev/null | unmunge >/dev/null 2>&1; do sleep 0.2; done' \
    || die "munged did not start; see /var/log/munge/munged.log"
}

wait_for_node() {
  # The node is usable once slurmctld lists it idle (or mixed/allocated: already running jobs).
  local state=""
  for _ in $(seq 60); do
    state=$(timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) return ;; esac
    sleep 0.5
  done
  die "the node $NODE did not become idle within 30 s (state: ${state:-none}); see" \
      "$STATE/slurmctld.log and $STATE/slurmd.log"
}

start() {
  local mode=${1:-overmemkill} cgroup_version=""
  case "$mode" in
    overmemkill) ;;
    cgroup) ;;
    *) die "unknown mode '$mode': choose overmemkill or cgroup" ;;
  esac
  need_root
  install_missing
  [ "$mode" = cgroup ] && cgroup_version=$(check_cgroup)
  if alive "$CTLD_PID" || alive "$SLURMD_PID"; then
    grep -qF "($mode mode)" "$CONF" \
      || die "a cluster is running in another mode: run 'scripts/slurm_local.sh stop' first"
    wait_for_node
    echo "slurm_local.sh: already running ($mode mode)"
    return
  fi
  write_config "$mode" "$cgroup_version"
  start_munge
  slurmctld -i   # -i: ignore state left by an earlier cluster (jobs, node states)
  slurmd
  wait_for_node
  echo "slurm_local.sh: one-node cluster up ($mode mode): node $NODE, $(nproc) CPUs;" \
       "logs in $STATE"
}

stop_pid_file() {
  local file=$1 name=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm_local.sh: $name ($pid) ignored SIGTERM for 10 s; SIGKILL" >&2
      kill -KILL "$pid"
    fi
  fi
  rm -f "$file"
}

stop() {
  need_root
  if alive "$CTLD_PID"; then
    timeout 10 scancel --user=root --full 2>/dev/null || true
    # KillWait is 30 s: a cancelled job is gone within it, or SLURM kills it.
    for _ in $(seq 80); do
      [ -z "$(timeout 5 squeue -h -t all -o %i 2>/dev/null | head -1)" ] && break
      timeout 5 squeue -h -o %T 2>/dev/null | grep -qvE 'COMPLETED|CANCELLED|FAILED|OUT_OF_ME' \
        || break
      sleep 0.5
    done
  fi
  stop_pid_file "$SLURMD_PID" slurmd
  stop_pid_file "$CTLD_PID" slurmctld
  stop_pid_file "$MUNGE_PID" munged
  echo "slurm_local.sh: stopped"
}

status() {
  local name file
  for name in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
    file=${name#*:}
    if alive "$file"; then echo "${name%%:*}: running (pid $(cat "$file"))"
    else echo "${name%%:*}: not running"; fi
  done
  alive "$CTLD_PID" && timeout 5 sinfo || true
}

case "${1:-}" in
  start) start "${2:-overmemkill}" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [overmemkill|cgroup] | stop | status" >&2; exit 2 ;;
esac
