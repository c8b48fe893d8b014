#!/usr/bin/env bash
# Runs every Periscope test: formatting, lints, unit tests, and the end-to-end tests that
# load the real probes (root needed; under CI=true they fail rather than skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
scripts/containers.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# End-to-end tests share the kernel and compare exact counts: run them one at a time.
cargo test --locked -- --test-threads=1
