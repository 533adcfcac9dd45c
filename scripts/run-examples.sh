#!/usr/bin/env bash
# Builds the example plugins into modules/, builds modhost and runs it on the embedded
# default (no external service). Extra arguments go to `modhost run`, e.g.:
#
#   scripts/run-examples.sh --listen 127.0.0.1:9000
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
"$root/scripts/ensure-toolchain.sh"
cd "$root"
scripts/build-plugins.sh --release
cargo build --release -p modhost --features kafka
exec target/release/modhost run --modules modules --data-dir data "$@"
