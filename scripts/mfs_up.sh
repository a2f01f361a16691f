#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Start a throw-away MooseFS cluster (1 master + 2 chunkservers) and mount it twice on this host:
# the two mounts stand for two inference nodes sharing one distributed file system, so tests can
# check cross-node visibility, rename atomicity and locks against a real DFS, not a local dir.
#
#   bash scripts/mfs_up.sh        # as root, or via sudo (it re-runs itself with sudo)
#   bash scripts/mfs_down.sh      # tear it down again (idempotent)
#
# Safe to re-run: a healthy cluster from an earlier run is left alone; a half-dead one is torn
# down and started fresh. At the end the mounts are printed and written to $MFS_ROOT/mounts as
# one line "A:B" (the format of YRCACHE_SHARED_MOUNTS, read by tests/conftest.py).
#
# Environment (all optional):
#   MFS_ROOT   /tmp/yrcache-mfs           everything lives here; cluster data in $MFS_ROOT/cluster
#   MNT_A      $MFS_ROOT/mnt_a            mount point of "node A"
#   MNT_B      $MFS_ROOT/mnt_b            mount point of "node B"
#   MFS_NETNS  yrcmfs                     private network namespace the daemons run in
#   MFS_IP     10.250.0.1                 the cluster's address inside that namespace
#   MFS_GOAL   1                          copies per chunk (2 = replicate on both chunkservers)
#   MFS_READY_TIMEOUT  30                 seconds to wait for the cluster to become usable
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MFS_ROOT=${MFS_ROOT:-/tmp/yrcache-mfs}
MNT_A=${MNT_A:-$MFS_ROOT/mnt_a}
MNT_B=${MNT_B:-$MFS_ROOT/mnt_b}
MFS_NETNS=${MFS_NETNS:-yrcmfs}
MFS_IP=${MFS_IP:-10.250.0.1}
MFS_GOAL=${MFS_GOAL:-1}
# How long the client caches directory entries (mfsmount default 1 s). yrcache never removes or
# renames the shard directories of a cache root, so a long cache is safe, and it turns a cold
# object lookup from three metadata round trips (ns/ab/cd/k.kv) into one. File entries stay
# uncached (mfsentrycacheto=0): an object evicted on one node is gone at once on the others.
MFS_DIRENTRY_CACHE=${MFS_DIRENTRY_CACHE:-60}
MFS_READY_TIMEOUT=${MFS_READY_TIMEOUT:-30}
export MFS_ROOT MNT_A MNT_B MFS_NETNS MFS_IP MFS_GOAL MFS_READY_TIMEOUT

# Network namespaces, FUSE mounts and the daemons all need root: re-run the whole script under
# sudo (keeping the overrides) rather than sprinkling sudo over every line.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "mfs_up.sh: needs root (no sudo here)" >&2; exit 1; }
  exec sudo --preserve-env=MFS_ROOT,MNT_A,MNT_B,MFS_NETNS,MFS_IP,MFS_GOAL,MFS_READY_TIMEOUT \
    bash "$0" "$@"
fi

CLUSTER=$MFS_ROOT/cluster
NSPATH=/run/netns/$MFS_NETNS
# `nsenter --net`, NOT `ip netns exec`: the latter also gives the command a private mount
# namespace, so the FUSE mounts made by mfsmount would be invisible to the host.
NS=(nsenter "--net=$NSPATH")
MOUNTS_FILE=$MFS_ROOT/mounts
t_start=$(date +%s.%N)

log() { echo "mfs_up: $*"; }
die() {
  echo "mfs_up: ERROR: $*" >&2
  # Daemons log to syslog (none runs here); their start-up output went to these files instead.
  for f in "$CLUSTER"/logs/*.log; do
    [ -s "$f" ] && { echo "--- $f (tail)" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# True when both mounts are live MooseFS mounts of the same file system: a probe file written
# through A must be readable through B. Everything runs under `timeout` because a FUSE mount
# whose mfsmount died answers ENOTCONN or, worse, hangs.
cluster_healthy() {
  local m probe
  for m in "$MNT_A" "$MNT_B"; do
    timeout 5 mountpoint -q "$m" 2>/dev/null || return 1
    [ "$(findmnt -n -o FSTYPE --target "$m" 2>/dev/null)" = fuse ] || return 1
  done
  probe=".yrcache-mfs-probe.$$"
  timeout 10 bash -c '
    set -e
    echo "$3" > "$1/$4"
    for _ in $(seq 1 50); do
      [ "$(cat "$2/$4" 2>/dev/null)" = "$3" ] && { rm -f "$1/$4"; exit 0; }
      sleep 0.1
    done
    rm -f "$1/$4"; exit 1' _ "$MNT_A" "$MNT_B" "probe-$$-$RANDOM" "$probe" >/dev/null 2>&1
}

write_mounts_file() {
  # tmp + rename so a reader never sees a half-written line
  echo "$MNT_A:$MNT_B" > "$MOUNTS_FILE.tmp"
  mv -f "$MOUNTS_FILE.tmp" "$MOUNTS_FILE"
}

# ---- 1. already up? ---------------------------------------------------------------------------
if cluster_healthy; then
  write_mounts_file
  log "MooseFS already up (left as is)"
  echo "$MNT_A"
  echo "$MNT_B"
  exit 0
fi

# Anything left from an earlier run (dead mounts, daemons, netns, data) would make the master
# refuse to start (lock held) or the mounts fail (busy mount point): clear it first.
if [ -e "$CLUSTER" ] || [ -e "$NSPATH" ] || [ -e "$MOUNTS_FILE" ] \
   || findmnt -n "$MNT_A" >/dev/null 2>&1 || findmnt -n "$MNT_B" >/dev/null 2>&1; then
  log "stale state from an earlier run found; running mfs_down.sh first"
  bash "$HERE/mfs_down.sh"
fi

# ---- 2. packages ------------------------------------------------------------------------------
# moosefs-cli (mfscli) is needed for the readiness check below: without it the wait loop would
# never see the chunkservers register.
if ! command -v mfsmaster >/dev/null || ! command -v mfschunkserver >/dev/null \
   || ! command -v mfsmount >/dev/null || ! command -v mfscli >/dev/null; then
  log "installing moosefs-master moosefs-chunkserver moosefs-client moosefs-cli"
  # Lock::Timeout: another apt run (e.g. scripts/setup.sh) may hold the dpkg lock for a while.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    moosefs-master moosefs-chunkserver moosefs-client moosefs-cli >/dev/null
fi
for tool in ip nsenter findmnt mountpoint; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install iproute2 / util-linux)"
done
[ -e /dev/fuse ] || die "/dev/fuse missing: FUSE is not available on this machine"

# ---- 3. network namespace ---------------------------------------------------------------------
# MooseFS chunkservers refuse any 127.0.0.0/8 master address ("localhost can't be used for
# connecting with master"), and tests may not use the host's real interfaces. So the cluster gets
# its own address on the loopback device of a private netns: nothing ever leaves that namespace,
# and it also gives the cluster its own port space (two clusters with different MFS_NETNS coexist).
ip netns add "$MFS_NETNS" 2>/dev/null || [ -e "$NSPATH" ] || die "ip netns add $MFS_NETNS failed"
ip -n "$MFS_NETNS" link set lo up
ip -n "$MFS_NETNS" addr add "$MFS_IP/32" dev lo 2>/dev/null || true

# ---- 4. configuration -------------------------------------------------------------------------
# /etc/mfs stays untouched: every config lives under $CLUSTER and is thrown away by mfs_down.sh.
mkdir -p "$CLUSTER"/{etc,logs,master,cs1/data,cs1/hdd,cs2/data,cs2/hdd} "$MNT_A" "$MNT_B"
# Root daemons, normal nice and OOM behaviour (the defaults are user mfs, nice -19 and an
# OOM-killer-exempt master, none of which a test cluster wants). Chunk deletion limits raised so
# space from deleted test files comes back sooner.
cat > "$CLUSTER/etc/mfsmaster.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $CLUSTER/master
EXPORTS_FILENAME = $CLUSTER/etc/mfsexports.cfg
TOPOLOGY_FILENAME = $CLUSTER/etc/mfstopology.cfg
MATOML_LISTEN_HOST = $MFS_IP
MATOCS_LISTEN_HOST = $MFS_IP
MATOCL_LISTEN_HOST = $MFS_IP
NICE_LEVEL = 0
DISABLE_OOM_KILLER = 0
CHUNKS_SOFT_DEL_LIMIT = 100
CHUNKS_HARD_DEL_LIMIT = 200
CFG
# Anyone inside the netns may mount read-write with root kept as root (only this host reaches it).
printf '*\t/\trw,alldirs,admin,maproot=0:0\n*\t.\trw\n' > "$CLUSTER/etc/mfsexports.cfg"
: > "$CLUSTER/etc/mfstopology.cfg"
for i in 1 2; do
  cat > "$CLUSTER/etc/mfschunkserver$i.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $CLUSTER/cs$i/data
HDD_CONF_FILENAME = $CLUSTER/etc/mfshdd$i.cfg
BIND_HOST = $MFS_IP
MASTER_HOST = $MFS_IP
CSSERV_LISTEN_HOST = $MFS_IP
CSSERV_LISTEN_PORT = $((9421 + 100 * i))
HDD_LEAVE_SPACE_DEFAULT = 1GiB
NICE_LEVEL = 0
DISABLE_OOM_KILLER = 0
CFG
  echo "$CLUSTER/cs$i/hdd" > "$CLUSTER/etc/mfshdd$i.cfg"
done
# A new master needs an (empty) metadata file to start from; the package ships one.
[ -f "$CLUSTER/master/metadata.mfs" ] \
  || cp /var/lib/mfs/metadata.mfs.empty "$CLUSTER/master/metadata.mfs"

# ---- 5. daemons -------------------------------------------------------------------------------
# `start` daemonizes; each writes its PID to DATA_PATH/.mfs*.lock, which mfs_down.sh uses.
"${NS[@]}" mfsmaster -c "$CLUSTER/etc/mfsmaster.cfg" start >"$CLUSTER/logs/master.log" 2>&1 \
  || die "mfsmaster did not start"
for i in 1 2; do
  "${NS[@]}" mfschunkserver -c "$CLUSTER/etc/mfschunkserver$i.cfg" start \
    >"$CLUSTER/logs/cs$i.log" 2>&1 || die "mfschunkserver $i did not start"
done

deadline=$(( $(date +%s) + MFS_READY_TIMEOUT ))
# Wait until both chunkservers have registered with the master: a mount made earlier works, but
# its first writes would fail or stall with no chunkserver to put chunks on.
n=0
while :; do
  # -SCS lists the chunkservers, one "ip:port" row each; mfscli must run in the netns, since the
  # master listens on $MFS_IP only.
  n=$("${NS[@]}" mfscli -H "$MFS_IP" -SCS -p 2>/dev/null | grep -c "$MFS_IP" || true)
  [ "$n" -ge 2 ] && break
  [ "$(date +%s)" -lt "$deadline" ] \
    || die "only $n of 2 chunkservers registered after ${MFS_READY_TIMEOUT}s"
  sleep 0.1
done

# ---- 6. mounts --------------------------------------------------------------------------------
# mfsmount must also run in the netns (it connects to $MFS_IP) but with `nsenter --net` only, so
# the mount itself lands in the host's mount namespace, usable by every process. mfsnice=0: the
# default -19 would let the FUSE client starve the tests on a small machine. The directory-entry
# cache: see MFS_DIRENTRY_CACHE above.
for m in "$MNT_A" "$MNT_B"; do
  "${NS[@]}" mfsmount -H "$MFS_IP" -o mfsnice=0,mfsdirentrycacheto="$MFS_DIRENTRY_CACHE" "$m" \
    >>"$CLUSTER/logs/mount.log" 2>&1 \
    || die "mfsmount $m failed"
done
# MooseFS admin tools reach the master through a proxy that mfsmount opens on 127.0.0.1 inside
# the netns, so they run there too. Trash time 0: otherwise every deleted or renamed-over file
# keeps its chunks for a day. (Deleted files are still held ~10 min by the client, so tests must
# never assert on df/statvfs free space.) Goal 1: one copy is enough for a test and twice as fast.
"${NS[@]}" mfssettrashtime -r 0 "$MNT_A" >/dev/null || die "mfssettrashtime failed"
"${NS[@]}" mfssetgoal -r "$MFS_GOAL" "$MNT_A" >/dev/null || die "mfssetgoal failed"
# The root is created root:root 0755; let non-root test processes make their own directories.
chmod 1777 "$MNT_A"

until cluster_healthy; do
  [ "$(date +%s)" -lt "$deadline" ] || die "mounts not usable after ${MFS_READY_TIMEOUT}s"
  sleep 0.2
done
write_mounts_file

log "MooseFS up in $(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" \
    "(mounts also in $MOUNTS_FILE; export YRCACHE_SHARED_MOUNTS=$MNT_A:$MNT_B)"
echo "$MNT_A"
echo "$MNT_B"
