#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Tear down what scripts/gluster_up.sh started: unmount both mounts, stop glusterd, the bricks and
# the FUSE clients, delete the network namespace and throw the volume's data away. Idempotent: fine
# when nothing runs or when an earlier run died half-way. Takes the same environment overrides as
# gluster_up.sh (GLUSTER_ROOT, GLUSTER_MNT_A, GLUSTER_MNT_B, GLUSTER_NETNS).
set -euo pipefail

GLUSTER_ROOT=${GLUSTER_ROOT:-/tmp/yrcache-gluster}
GLUSTER_MNT_A=${GLUSTER_MNT_A:-$GLUSTER_ROOT/mnt_a}
GLUSTER_MNT_B=${GLUSTER_MNT_B:-$GLUSTER_ROOT/mnt_b}
GLUSTER_NETNS=${GLUSTER_NETNS:-yrcgfs}
export GLUSTER_ROOT GLUSTER_MNT_A GLUSTER_MNT_B GLUSTER_NETNS

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "gluster_down.sh: needs root (no sudo here)" >&2; exit 1; }
  exec sudo --preserve-env=GLUSTER_ROOT,GLUSTER_MNT_A,GLUSTER_MNT_B,GLUSTER_NETNS bash "$0" "$@"
fi

CLUSTER=$GLUSTER_ROOT/cluster
t_start=$(date +%s.%N)

# First withdraw the advertisement, so nobody picks up mounts that are about to disappear.
rm -f "$GLUSTER_ROOT/mounts" "$GLUSTER_ROOT/mounts.tmp"

# Unmounting makes the glusterfs clients exit by themselves (within ~1 s; they are stopped below
# like the daemons if not). A mount whose client died answers ENOTCONN and a plain umount may fail
# on it (or on a busy mount): detach it lazily then.
for m in "$GLUSTER_MNT_A" "$GLUSTER_MNT_B"; do
  if findmnt -n "$m" >/dev/null 2>&1; then
    timeout 20 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  fi
done

# Stop exactly the processes this cluster started. glusterd, the bricks (glusterfsd) and glustershd
# write pid files under $CLUSTER/run; the FUSE clients have none, but like everything gluster_up.sh
# starts they run inside our private netns. /proc/PID/comm must start with "gluster" so that a
# reused PID is never signalled.
is_gluster() { [ "$(cut -c1-7 "/proc/$1/comm" 2>/dev/null)" = gluster ]; }
pids=()
add_pid() {
  [ -n "$1" ] && is_gluster "$1" && [[ " ${pids[*]} " != *" $1 "* ]] && pids+=("$1")
  return 0
}
if [ -d "$CLUSTER/run" ]; then
  while IFS= read -r -d '' pidfile; do
    add_pid "$(tr -dc 0-9 < "$pidfile" || true)"
  done < <(find "$CLUSTER/run" -name '*.pid' -print0 2>/dev/null)
fi
if [ -e "/run/netns/$GLUSTER_NETNS" ]; then
  for pid in $(ip netns pids "$GLUSTER_NETNS" 2>/dev/null || true); do add_pid "$pid"; done
fi
# Each brick listens on a unix socket that glusterd always puts in /var/run/gluster (named by a
# hash, whatever run-directory says): note ours from the bricks' command lines ("-S PATH").
sockets=()
for pid in ${pids[@]+"${pids[@]}"}; do
  mapfile -d '' -t args < "/proc/$pid/cmdline" 2>/dev/null || continue
  for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    [ "${args[i]}" = -S ] && [[ ${args[i+1]} == /var/run/gluster/*.socket ]] && sockets+=("${args[i+1]}")
  done
done
if ((${#pids[@]})); then
  kill -TERM "${pids[@]}" 2>/dev/null || true
  # glusterd and the bricks exit within a fraction of a second on SIGTERM. The data is thrown
  # away below, so SIGKILL after the grace period loses nothing.
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
fi
rm -f ${sockets[@]+"${sockets[@]}"}

ip netns del "$GLUSTER_NETNS" 2>/dev/null || true

# --one-file-system: never descend into a mount that is somehow still attached under GLUSTER_ROOT.
rm -rf --one-file-system "$CLUSTER" "$GLUSTER_ROOT/bricks"
for m in "$GLUSTER_MNT_A" "$GLUSTER_MNT_B"; do
  findmnt -n "$m" >/dev/null 2>&1 || rmdir "$m" 2>/dev/null || true
done
rmdir "$GLUSTER_ROOT" 2>/dev/null || true

elapsed=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
echo "gluster_down: GlusterFS down in $elapsed s"
