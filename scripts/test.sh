#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, clippy, then every test (the
# integration tests build the plugins and run the real host over loopback, against
# embedded SQLite and the local PostgreSQL, which it starts if it is stopped; the
# cluster tests start their own etcd, nats-server and redis-server, installed by
# scripts/ensure-services.sh), then the three-host example cluster.
#
#   scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$root"
scripts/ensure-toolchain.sh
scripts/ensure-services.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The Kafka engine is a cargo feature (librdkafka is built from source): on in CI.
cargo clippy --workspace --all-targets --features modhost/kafka -- -D warnings
echo "== cargo test"
# The manifest fuzz test runs for a bounded time: 60 s under CI, 5 s otherwise.
if [ -n "${CI:-}" ]; then export MODHOST_FUZZ_SECONDS="${MODHOST_FUZZ_SECONDS:-60}"; fi
cargo test --workspace --no-fail-fast --features modhost/kafka
# plugin-api's `build` module (the build-script helper) is compiled only with the `build`
# feature, which the workspace run above does not turn on: run its tests and doctest too.
cargo test -p modhost-plugin-api --features build
echo "== the plugin API reference (cargo doc -p modhost-plugin-api)"
RUSTDOCFLAGS="-D warnings" cargo doc -p modhost-plugin-api --no-deps --features schema,build
echo "== schemathesis against /openapi.json"
scripts/schemathesis.sh
echo "== the example modules on three hosts (scripts/run-cluster.sh --check)"
scripts/run-cluster.sh --check
echo "== scripts"
bash -n scripts/*.sh
