#!/usr/bin/env bash
# Runs the benchmarks side by side and writes bench/RESULTS.md:
#   1. HTTP through hello.so in modhost vs. the same handler in a plain hyper server
#      (wrk on loopback, alternating runs), without and with the full authz check;
#   2. the cost of one call across the ABI (divan): direct, sabi_trait, plugin FfiFuture
#      handler, out-of-process over a Unix socket;
#   3. startup to /readyz with 10, 100 and 500 modules; the resolver on 10,000 modules;
#   4. hot reload latency (rename to first new response) and RSS growth per reload;
#   5. event bus throughput and module-to-module call round trip;
#   6. instructions per request (callgrind): N and 3N keep-alive requests, per request =
#      (total(3N) - total(N)) / 2N, modhost vs. the plain hyper baseline (which checks
#      tokens as modhost does, with the jsonwebtoken crate), public and private route;
#   7. the core services in-process vs over gRPC on loopback, and logins per second;
#   8. an isolated module (worker process) vs in-process: added route latency, memory
#      across hot reloads, instructions per request with the worker counted;
#   9. cluster mode (etcd, nats-server and noida-db started by the harness): a service
#      call across hosts vs in-process, events through JetStream and Kafka with two
#      consumer hosts vs in-process, and 1,000 simulated hosts with 10,000 services in etcd.
#
#   scripts/bench.sh [--quick] [--wasm] [--instructions] [--isolation] [--cluster]
#     --quick:        shorter runs, for a smoke test
#     --wasm:         also time a WebAssembly function under wasmtime (builds wasmtime: slow)
#     --instructions: only section 6, printed (RESULTS.md is left alone)
#     --isolation:    only section 8, printed (RESULTS.md is left alone)
#     --cluster:      only section 9, printed (RESULTS.md is left alone)
#
# Benchmarks never fail CI; they are not timed tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs=10; rounds=3; counts="10,100,500,1000"; reloads=20; features=(); only_instructions=""; only_isolation=""; only_cluster=""; requests=1000
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --quick) secs=2; rounds=1; counts="10,100"; reloads=5; requests=300 ;;
    --wasm) features=(--features wasm) ;;
    --instructions) only_instructions=1 ;;
    --isolation) only_isolation=1 ;;
    --cluster) only_cluster=1 ;;
    *) echo "bench: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
if ! command -v wrk >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk
  else
    echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1
  fi
fi
if ! command -v valgrind >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq valgrind
  else
    echo "bench: valgrind is needed (apt-get install valgrind)" >&2; exit 1
  fi
fi
scripts/build-plugins.sh --release --out "$root/target/bench-modules" plugins/hello plugins/blog plugins/billing plugins/notifications >/dev/null
scripts/ensure-services.sh >/dev/null
cargo build -q --release -p modhost -p modhost-bench --features modhost/kafka
bin="$root/target/release"
key=$(printf 'ab%.0s' $(seq 1 32))
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/modules"
cp -r "$root/target/bench-modules/hello" "$tmp/modules/"

instructions() {
  local token
  token=$(MODHOST_AUTH_SIGNING_SEED=$key "$bin/modhost" admin token --ttl 2h --data-dir "$tmp/instr-data" 2>/dev/null)
  echo "## 6. Instructions per request (callgrind)"
  echo
  echo "\`valgrind --tool=callgrind\` around each server; ${requests} and $((3 * requests)) keep-alive requests in two runs; per request = (total($((3 * requests))) − total(${requests})) / $((2 * requests)). hello's greeting route; the baseline is the same handler in plain hyper, checking the same token with the \`jsonwebtoken\` crate on the private route."
  echo
  echo "| route | modhost | plain hyper | ratio | target | |"
  echo "|---|---|---|---|---|---|"
  "$bin/harness" instructions "$bin/modhost" "$bin/baseline" "$tmp/modules" "$key" "$token" "$requests"
  echo
}

isolation() {
  echo "## 8. Isolated module (worker process) vs in-process"
  echo
  "$bin/harness" isolation "$bin/modhost" "$root/target/bench-modules/hello/libhello.so" $((requests * 5)) "$reloads" "$requests"
}

cluster() {
  echo "## 9. Cluster mode (issue 16)"
  echo
  echo "\`harness cluster\` on $(date -u +%Y-%m-%d); release builds; etcd $(etcd --version | awk '/etcd Version/{print $3}') and nats-server $(nats-server --version | awk '{print $2}') started by the harness on loopback; every host embedded SQLite."
  echo
  "$bin/harness" cluster "$bin/modhost" "$root/target/bench-modules" "$((requests * 2))" "$((requests * 2))" 1000
}

if [ -n "$only_cluster" ]; then
  cluster
  exit 0
fi
if [ -n "$only_instructions" ]; then
  instructions
  exit 0
fi
if [ -n "$only_isolation" ]; then
  isolation
  exit 0
fi

MODHOST_AUTH_SIGNING_SEED=$key MODHOST_WATCH=false RUST_LOG=warn "$bin/modhost" run --modules "$tmp/modules" --data-dir "$tmp/data" --listen 127.0.0.1:18181 >/dev/null 2>&1 &
"$bin/baseline" 127.0.0.1:18182 "$key" &
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18181/readyz >/dev/null 2>&1 && break; sleep 0.1; done
token=$(MODHOST_AUTH_SIGNING_SEED=$key "$bin/modhost" admin token --ttl 1h --data-dir "$tmp/data" 2>/dev/null)

out="$root/bench/RESULTS.md"
{
  echo "# Benchmark results"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d), on this machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'). Release builds. Shared, noisy machine: compare ratios from one run, not absolute figures across runs."
  echo
  echo "## 1. HTTP: hello.so through modhost vs. the same handler in plain hyper"
  echo
  echo "wrk, 2 threads, 32 connections, ${secs} s per run, ${rounds} alternating run(s) per server, loopback. Target: ≥ 0.90 of the baseline's requests/s on the public route. The baseline checks the token with the jsonwebtoken crate; modhost caches verified tokens."
  echo
  echo "| case | baseline req/s | baseline p50 / p99 ms | modhost req/s | modhost p50 / p99 ms | modhost / baseline |"
  echo "|---|---|---|---|---|---|"
  "$bin/harness" http 127.0.0.1:18182 127.0.0.1:18181 "$token" "$secs" "$rounds" 32
  echo
} > "$out"
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true

{
  echo "## 2. One call across the boundary (divan, median)"
  echo
  echo '```'
  MODHOST_BENCH_PLUGINS="$root/target/release" cargo bench -q -p modhost-bench ${features[@]+"${features[@]}"} --bench abi_calls 2>&1 | grep -v "^$" || true
  echo '```'
  echo
  echo "## 3. Startup to /readyz = 200 (embedded SQLite, random dependency DAG)"
  echo
  echo "Three runs each. Targets: 100 modules in under 300 ms; 1,000 in under 1 s."
  echo
  echo "| modules | fastest ms | median ms | slowest ms |"
  echo "|---|---|---|---|"
  "$bin/harness" startup "$bin/modhost" "$root/target/bench-modules/hello/libhello.so" "$counts"
  echo
  echo "## 4. Hot reload"
  echo
  echo "Time from renaming the new library into modules/ to the first response from the new code; RSS of the host process before the first and after the last reload. Target at the default settings: p50 under 150 ms, p99 under 250 ms."
  echo
  echo "| run | p50 ms | p99 ms | max ms | RSS growth per reload | library size | RSS before → after |"
  echo "|---|---|---|---|---|---|---|"
  "$bin/harness" reload "$bin/modhost" "$root/target/bench-modules/hello/libhello.so" "$reloads" default
  "$bin/harness" reload "$bin/modhost" "$root/target/bench-modules/hello/libhello.so" "$reloads" poll:250
  echo
  echo "## 5. Resolver, event bus, service calls (divan, median)"
  echo
  echo '```'
  cargo bench -q -p modhost-bench --bench platform 2>&1 | grep -v "^$" || true
  echo '```'
  echo
  instructions
  echo
  echo "## 7. Core services: in-process vs over gRPC (loopback)"
  echo
  "$bin/harness" core "$bin/modhost" "$requests" "$secs"
  echo
  isolation
  echo
  cluster
} >> "$out"
echo "bench: wrote $out"
