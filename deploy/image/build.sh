#!/usr/bin/env bash
# Builds Periscope's container image from a release build on this machine:
#   deploy/image/build.sh [TAG]            (default periscope:latest)
# PERISCOPE_BINARY=path uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag="${1:-periscope:latest}"
binary="${PERISCOPE_BINARY:-}"
if [ -z "$binary" ]; then
  cargo build --release --locked
  binary=target/release/periscope
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
install -D -m 0755 "$binary" "$context/rootfs/usr/bin/periscope"
# The dynamic loader and every library the binary links, at the paths it looks for them.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$lib" "$context/rootfs$lib"
done
# Its default configuration serves on :9101; a file under /etc/periscope may replace it.
mkdir -p "$context/rootfs/etc/periscope" "$context/rootfs/tmp"
cp deploy/image/Dockerfile "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context"
echo "built $tag"
