#!/usr/bin/env bash
# Starts the container engines the end-to-end tests drive (Docker, and the containerd it
# runs) when they are not running yet. setup.sh --test installs them.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  echo "containers: Docker is running"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "containers: dockerd is not installed (scripts/setup.sh --test installs docker.io)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log="${TMPDIR:-/tmp}/periscope-test-dockerd.log"
echo "containers: starting dockerd (log: $log)"
# setsid: the daemon outlives this script and is not in its process group.
$SUDO setsid dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "containers: Docker is running"
    exit 0
  fi
  sleep 0.5
done
echo "containers: dockerd did not come up in 30 s; its log:" >&2
tail -20 "$log" >&2
exit 1
