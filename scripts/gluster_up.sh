#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Start a throw-away GlusterFS volume (1 glusterd + 2 bricks) and mount it twice on this host: the
# second real distributed file system for the shared-FS tests, next to scripts/mfs_up.sh. The two
# mounts stand for two inference nodes; GlusterFS differs from MooseFS in ways the store must
# survive (no metadata server: names are hashed over the bricks; client-side caches; O_DIRECT is
# passed down to the bricks' local file system).
#
#   bash scripts/gluster_up.sh      # as root, or via sudo (it re-runs itself with sudo)
#   bash scripts/gluster_down.sh    # tear it down again (idempotent)
#
# Safe to re-run: a healthy volume from an earlier run is left alone; a half-dead one is torn down
# and started fresh. At the end the mounts are printed and written to $GLUSTER_ROOT/mounts as one
# line "A:B" (the format of YRCACHE_SHARED_MOUNTS, read by tests/conftest.py).
#
# Environment (all optional):
#   GLUSTER_ROOT     /tmp/yrcache-gluster    everything lives here: cluster/ (state, logs), bricks/
#   GLUSTER_MNT_A    $GLUSTER_ROOT/mnt_a     mount point of "node A"
#   GLUSTER_MNT_B    $GLUSTER_ROOT/mnt_b     mount point of "node B"
#   GLUSTER_NETNS    yrcgfs                  private network namespace the daemons run in
#   GLUSTER_IP       10.250.1.1              the cluster's address inside that namespace
#   GLUSTER_VOLUME   yrc                     volume name
#   GLUSTER_REPLICA  1                       1: distribute over the 2 bricks; 2: replica 2
#   GLUSTER_CACHE    default                 default: stock client caching (a typical deployment);
#                                            strict: client caches off (see step 6)
#   GLUSTER_READY_TIMEOUT  30                seconds to wait for each start-up step
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
GLUSTER_ROOT=${GLUSTER_ROOT:-/tmp/yrcache-gluster}
GLUSTER_MNT_A=${GLUSTER_MNT_A:-$GLUSTER_ROOT/mnt_a}
GLUSTER_MNT_B=${GLUSTER_MNT_B:-$GLUSTER_ROOT/mnt_b}
GLUSTER_NETNS=${GLUSTER_NETNS:-yrcgfs}
GLUSTER_IP=${GLUSTER_IP:-10.250.1.1}
GLUSTER_VOLUME=${GLUSTER_VOLUME:-yrc}
GLUSTER_REPLICA=${GLUSTER_REPLICA:-1}
GLUSTER_CACHE=${GLUSTER_CACHE:-default}
GLUSTER_READY_TIMEOUT=${GLUSTER_READY_TIMEOUT:-30}
ENV_VARS=GLUSTER_ROOT,GLUSTER_MNT_A,GLUSTER_MNT_B,GLUSTER_NETNS,GLUSTER_IP,GLUSTER_VOLUME
ENV_VARS=$ENV_VARS,GLUSTER_REPLICA,GLUSTER_CACHE,GLUSTER_READY_TIMEOUT
export GLUSTER_ROOT GLUSTER_MNT_A GLUSTER_MNT_B GLUSTER_NETNS GLUSTER_IP GLUSTER_VOLUME \
  GLUSTER_REPLICA GLUSTER_CACHE GLUSTER_READY_TIMEOUT

# Network namespaces, FUSE mounts and the daemons all need root: re-run the whole script under
# sudo (keeping the overrides) rather than sprinkling sudo over every line.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "gluster_up.sh: needs root (no sudo here)" >&2; exit 1; }
  exec sudo --preserve-env="$ENV_VARS" bash "$0" "$@"
fi

case $GLUSTER_REPLICA in 1|2) ;; *) echo "gluster_up.sh: GLUSTER_REPLICA must be 1 or 2" >&2; exit 1;; esac
case $GLUSTER_CACHE in default|strict) ;;
  *) echo "gluster_up.sh: GLUSTER_CACHE must be default or strict" >&2; exit 1;; esac

CLUSTER=$GLUSTER_ROOT/cluster
BRICKS=$GLUSTER_ROOT/bricks
NSPATH=/run/netns/$GLUSTER_NETNS
# `nsenter --net`, NOT `ip netns exec`: the latter also gives the command a private mount
# namespace, so the FUSE mounts made by the glusterfs client would be invisible to the host.
NS=(nsenter "--net=$NSPATH")
# The CLI talks to glusterd over this unix socket (not the default /var/run/glusterd.socket, so a
# system glusterd, if any, is never touched) and would otherwise log to /var/log/glusterfs.
GLUSTER=("${NS[@]}" gluster --mode=script --glusterd-sock="$CLUSTER/run/glusterd.socket"
         --log-file="$CLUSTER/logs/cli.log")
MOUNTS_FILE=$GLUSTER_ROOT/mounts
# What the running cluster was started with: a healthy cluster with other settings is restarted.
SETTINGS="volume=$GLUSTER_VOLUME replica=$GLUSTER_REPLICA cache=$GLUSTER_CACHE ip=$GLUSTER_IP"
t_start=$(date +%s.%N)

log() { echo "gluster_up: $*"; }
die() {
  echo "gluster_up: ERROR: $*" >&2
  # The daemons' logs: errors and warnings only, less what glusterd logs on every fresh start
  # (no permission to raise its fd limit, no geo-replication config, no state from an earlier run).
  local f
  for f in "$CLUSTER"/logs/*.out; do
    [ -s "$f" ] && { echo "--- $f (tail)" >&2; tail -n 10 "$f" >&2; }
  done
  for f in "$CLUSTER"/logs/glusterd.log "$CLUSTER"/logs/bricks/*.log "$CLUSTER"/logs/client_*.log; do
    [ -s "$f" ] || continue
    echo "--- $f (last errors/warnings)" >&2
    grep -E '\] [EWC] \[' "$f" | grep -v -E 'MSGID: (106053|106061|101032)\]' | tail -n 10 >&2 || true
  done
  exit 1
}
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# True when both mounts are live GlusterFS mounts of the same volume: a probe file written through
# A must be readable through B. Everything runs under `timeout` because a FUSE mount whose client
# died answers ENOTCONN or, worse, hangs.
cluster_healthy() {
  local m probe
  for m in "$GLUSTER_MNT_A" "$GLUSTER_MNT_B"; do
    timeout 5 mountpoint -q "$m" 2>/dev/null || return 1
    [ "$(findmnt -n -o FSTYPE --target "$m" 2>/dev/null)" = fuse.glusterfs ] || return 1
  done
  probe=".yrcache-gluster-probe.$$"
  # shellcheck disable=SC2016  # $1..$4 are the inner shell's arguments
  timeout 10 bash -c '
    set -e
    echo "$3" > "$1/$4"
    for _ in $(seq 1 50); do
      [ "$(cat "$2/$4" 2>/dev/null)" = "$3" ] && { rm -f "$1/$4"; exit 0; }
      sleep 0.1
    done
    rm -f "$1/$4"; exit 1' _ "$GLUSTER_MNT_A" "$GLUSTER_MNT_B" "probe-$$-$RANDOM" "$probe" \
    >/dev/null 2>&1
}

write_mounts_file() {
  # tmp + rename so a reader never sees a half-written line
  echo "$GLUSTER_MNT_A:$GLUSTER_MNT_B" > "$MOUNTS_FILE.tmp"
  mv -f "$MOUNTS_FILE.tmp" "$MOUNTS_FILE"
}

# wait_for WHAT CMD...: poll CMD every 0.1 s until it succeeds (at most GLUSTER_READY_TIMEOUT s).
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + GLUSTER_READY_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what not reached after ${GLUSTER_READY_TIMEOUT}s"
    sleep 0.1
  done
}

# ---- 1. already up? ---------------------------------------------------------------------------
if [ "$(cat "$CLUSTER/settings" 2>/dev/null)" = "$SETTINGS" ] && cluster_healthy; then
  write_mounts_file
  log "GlusterFS already up (left as is)"
  echo "$GLUSTER_MNT_A"
  echo "$GLUSTER_MNT_B"
  exit 0
fi

# Anything left from an earlier run (dead mounts, daemons, netns, bricks that still carry the old
# volume's id), or a cluster started with other settings, would make the start fail or give the
# wrong volume: clear it first.
if [ -e "$CLUSTER" ] || [ -e "$BRICKS" ] || [ -e "$NSPATH" ] || [ -e "$MOUNTS_FILE" ] \
   || findmnt -n "$GLUSTER_MNT_A" >/dev/null 2>&1 || findmnt -n "$GLUSTER_MNT_B" >/dev/null 2>&1; then
  log "stale state from an earlier run found; running gluster_down.sh first"
  bash "$HERE/gluster_down.sh"
fi

# ---- 2. packages ------------------------------------------------------------------------------
# glusterfs-server: glusterd + glusterfsd (bricks) + the gluster CLI; glusterfs-client: the FUSE
# client. policy-rc.d / no systemd here: the package install starts no daemon.
if ! command -v glusterd >/dev/null || ! command -v glusterfs >/dev/null \
   || ! command -v gluster >/dev/null; then
  log "installing glusterfs-server glusterfs-client"
  # Lock::Timeout: another apt run (e.g. scripts/setup.sh) may hold the dpkg lock for a while.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    glusterfs-server glusterfs-client >/dev/null
fi
for tool in ip nsenter findmnt mountpoint; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install iproute2 / util-linux)"
done
[ -e /dev/fuse ] || die "/dev/fuse missing: FUSE is not available on this machine"

# ---- 3. network namespace ---------------------------------------------------------------------
# The gluster CLI refuses bricks on localhost/127.x, and tests may not use the host's real
# interfaces. So, as for MooseFS, the cluster gets its own address on the loopback device of a
# private netns: nothing leaves that namespace, and the cluster gets its own port space (glusterd
# 24007, bricks 49152+), so it coexists with any other cluster on the host.
ip netns add "$GLUSTER_NETNS" 2>/dev/null || [ -e "$NSPATH" ] || die "ip netns add $GLUSTER_NETNS failed"
ip -n "$GLUSTER_NETNS" link set lo up
ip -n "$GLUSTER_NETNS" addr add "$GLUSTER_IP/32" dev lo 2>/dev/null || true

# ---- 4. glusterd ------------------------------------------------------------------------------
# /etc/glusterfs and /var/lib/glusterd stay untouched: state, pid files, the CLI socket and all logs
# live under $CLUSTER and are thrown away by gluster_down.sh. (Two things glusterd puts outside it
# regardless: the brick processes' unix sockets in /var/run/gluster, removed by gluster_down.sh,
# and the empty dirs /var/lib/glusterd/ss_brick and /var/run/gluster/snaps.)
mkdir -p "$CLUSTER"/{etc,glusterd,run,logs} "$BRICKS"/b1 "$BRICKS"/b2 "$GLUSTER_MNT_A" "$GLUSTER_MNT_B"
echo "$SETTINGS" > "$CLUSTER/settings"
cat > "$CLUSTER/etc/glusterd.vol" <<CFG
volume management
    type mgmt/glusterd
    option working-directory $CLUSTER/glusterd
    option run-directory $CLUSTER/run
    option logging-directory $CLUSTER/logs
    option glusterd-sockfile $CLUSTER/run/glusterd.socket
    option transport-type socket
    option transport.socket.bind-address $GLUSTER_IP
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
CFG
# glusterd daemonizes once it listens; its pid goes to run/glusterd.pid (used by gluster_down.sh).
"${NS[@]}" glusterd -f "$CLUSTER/etc/glusterd.vol" -p "$CLUSTER/run/glusterd.pid" \
  -l "$CLUSTER/logs/glusterd.log" >"$CLUSTER/logs/glusterd.out" 2>&1 || die "glusterd did not start"
wait_for "glusterd answering the CLI" "${GLUSTER[@]}" volume list

# ---- 5. volume --------------------------------------------------------------------------------
# Default: plain distribute over two bricks (each file lives on one brick, chosen by a hash of its
# name; a rename to a name that hashes elsewhere leaves a link file behind). It starts fastest: no
# self-heal daemon, no replica quorum, every write goes to one brick. GLUSTER_REPLICA=2 writes each
# file to both bricks (and starts glustershd); beware that there, one directory created at the same
# moment through both mounts can end in a gfid split-brain (EIO on it until healed by hand).
# `force`: bricks on the root file system.
layout=()
if [ "$GLUSTER_REPLICA" = 2 ]; then layout=(replica 2); fi
"${GLUSTER[@]}" volume create "$GLUSTER_VOLUME" "${layout[@]}" transport tcp \
  "$GLUSTER_IP:$BRICKS/b1" "$GLUSTER_IP:$BRICKS/b2" force >"$CLUSTER/logs/create.out" 2>&1 \
  || die "volume create failed"

# ---- 6. client caching ------------------------------------------------------------------------
# default: what a stock GlusterFS deployment gives. The kernel caches entries and attributes for
# 1 s, md-cache caches stat for 1 s, quick-read serves small files from memory: for up to ~1 s a
# file changed, replaced or removed through A can still look old through B (old size, old content,
# still there), and a name that A keeps renaming over reads as missing now and then.
# strict: those client caches off; new names, sizes, contents and removals show up on the other
# mount within milliseconds (a name renamed over still reads as missing now and then on B).
# Both: write-behind stays on (flushed by fsync/close), and it buffers O_DIRECT writes too, so an
# EINVAL from the brick for a misaligned O_DIRECT write comes back at fsync/close, not at write.
FUSE_OPTS=()
if [ "$GLUSTER_CACHE" = strict ]; then
  for opt in performance.stat-prefetch performance.quick-read performance.open-behind; do
    "${GLUSTER[@]}" volume set "$GLUSTER_VOLUME" "$opt" off >/dev/null || die "volume set $opt failed"
  done
  # fopen-keep-cache=off: otherwise the page cache on B keeps a file's old content after an
  # in-place overwrite on A, indefinitely when md-cache is off.
  FUSE_OPTS=(--attribute-timeout=0 --entry-timeout=0 --negative-timeout=0 --fopen-keep-cache=off)
fi

"${GLUSTER[@]}" volume start "$GLUSTER_VOLUME" >"$CLUSTER/logs/start.out" 2>&1 \
  || die "volume start failed"
# Both bricks must be online before mounting: a client that comes up first sees a volume with a
# missing subvolume and fails creates whose names hash there.
bricks_online() {
  [ "$("${GLUSTER[@]}" volume status "$GLUSTER_VOLUME" --xml 2>/dev/null \
        | grep -c '<status>1</status>')" -ge 2 ]
}
wait_for "both bricks online" bricks_online

# ---- 7. mounts --------------------------------------------------------------------------------
# The FUSE client runs in the netns too (it connects to $GLUSTER_IP), with `nsenter --net` only, so
# the mount lands in the host's mount namespace, usable by every process. It is started directly
# (not through mount.glusterfs) so that its log goes under $CLUSTER.
for node in a b; do
  if [ $node = a ]; then m=$GLUSTER_MNT_A; else m=$GLUSTER_MNT_B; fi
  "${NS[@]}" glusterfs --volfile-server="$GLUSTER_IP" --volfile-id="$GLUSTER_VOLUME" \
    --log-file="$CLUSTER/logs/client_$node.log" --process-name=fuse "${FUSE_OPTS[@]}" "$m" \
    >>"$CLUSTER/logs/mount.out" 2>&1 || die "glusterfs client for $m failed"
done
# The root is created root:root 0755; let non-root test processes make their own directories.
wait_for "mount $GLUSTER_MNT_A" mountpoint -q "$GLUSTER_MNT_A"
chmod 1777 "$GLUSTER_MNT_A" || die "chmod of $GLUSTER_MNT_A failed"

deadline=$(( $(date +%s) + GLUSTER_READY_TIMEOUT ))
until cluster_healthy; do
  [ "$(date +%s)" -lt "$deadline" ] || die "mounts not usable after ${GLUSTER_READY_TIMEOUT}s"
  sleep 0.2
done
write_mounts_file

log "GlusterFS up in $(elapsed) s (volume $GLUSTER_VOLUME, replica $GLUSTER_REPLICA," \
    "cache $GLUSTER_CACHE; mounts also in $MOUNTS_FILE;" \
    "export YRCACHE_SHARED_MOUNTS=$GLUSTER_MNT_A:$GLUSTER_MNT_B)"
echo "$GLUSTER_MNT_A"
echo "$GLUSTER_MNT_B"
