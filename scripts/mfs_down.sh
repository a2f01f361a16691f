#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Tear down what scripts/mfs_up.sh started: unmount both mounts, stop the MooseFS daemons, delete
# the network namespace and throw the cluster's data away. Idempotent: fine when nothing runs or
# when an earlier run died half-way. Takes the same environment overrides as mfs_up.sh
# (MFS_ROOT, MNT_A, MNT_B, MFS_NETNS).
set -euo pipefail

MFS_ROOT=${MFS_ROOT:-/tmp/yrcache-mfs}
MNT_A=${MNT_A:-$MFS_ROOT/mnt_a}
MNT_B=${MNT_B:-$MFS_ROOT/mnt_b}
MFS_NETNS=${MFS_NETNS:-yrcmfs}
export MFS_ROOT MNT_A MNT_B MFS_NETNS

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "mfs_down.sh: needs root (no sudo here)" >&2; exit 1; }
  exec sudo --preserve-env=MFS_ROOT,MNT_A,MNT_B,MFS_NETNS bash "$0" "$@"
fi

CLUSTER=$MFS_ROOT/cluster
t_start=$(date +%s.%N)

# First withdraw the advertisement, so nobody picks up mounts that are about to disappear.
rm -f "$MFS_ROOT/mounts" "$MFS_ROOT/mounts.tmp"

# Unmounting ends the mfsmount processes by themselves. A mount whose mfsmount died answers
# ENOTCONN and a plain umount may fail on it (or on a busy mount): detach it lazily then.
for m in "$MNT_A" "$MNT_B"; do
  if findmnt -n "$m" >/dev/null 2>&1; then
    timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  fi
done

# Stop exactly the daemons this cluster started: their PIDs are in the lock files under
# DATA_PATH. /proc/PID/comm must start with "mfs" so that a reused PID is never signalled.
is_mfs() { [ "$(cut -c1-3 "/proc/$1/comm" 2>/dev/null)" = mfs ]; }
pids=()
for lock in "$CLUSTER"/cs1/data/.mfschunkserver.lock "$CLUSTER"/cs2/data/.mfschunkserver.lock \
            "$CLUSTER"/master/.mfsmaster.lock; do
  [ -f "$lock" ] || continue
  pid=$(tr -dc 0-9 < "$lock" || true)
  [ -n "$pid" ] && is_mfs "$pid" && pids+=("$pid")
done
# Fallback for stragglers whose lock files are gone (e.g. the data dir was removed by hand):
# every process inside our private netns was started by mfs_up.sh.
if [ -e "/run/netns/$MFS_NETNS" ]; then
  for pid in $(ip netns pids "$MFS_NETNS" 2>/dev/null || true); do
    is_mfs "$pid" && [[ " ${pids[*]} " != *" $pid "* ]] && pids+=("$pid")
  done
fi
if ((${#pids[@]})); then
  kill -TERM "${pids[@]}" 2>/dev/null || true
  # Graceful stop, in parallel: chunkservers ~2 s, master ~5 s (it saves its metadata). The data
  # is thrown away below, so SIGKILL after the grace period loses nothing.
  for _ in $(seq 1 150); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
fi

ip netns del "$MFS_NETNS" 2>/dev/null || true

# --one-file-system: never descend into a mount that is somehow still attached under MFS_ROOT.
rm -rf --one-file-system "$CLUSTER"
for m in "$MNT_A" "$MNT_B"; do
  findmnt -n "$m" >/dev/null 2>&1 || rmdir "$m" 2>/dev/null || true
done
rmdir "$MFS_ROOT" 2>/dev/null || true

elapsed=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
echo "mfs_down: MooseFS down in $elapsed s"
