#!/usr/bin/env bash
# Runs the example modules on three hosts of one cluster, on this machine
# (docs/scale-out.md): etcd on 127.0.0.1:2379 (started here if nothing listens there,
# data under target/cluster-demo/), the NATS (4222), Redis (6379) and PostgreSQL (5432)
# already running, `modhost core` on 127.0.0.1:8090, and three hosts:
# blog on A (http://127.0.0.1:8081), billing on B (8082), notifications on C (8083).
#
#   scripts/run-cluster.sh            # until Ctrl-C, which stops everything
#   scripts/run-cluster.sh --check    # start, create a post on A, see it notified on C, stop
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
check=""
case "${1:-}" in
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --check) check=1 ;;
  "") ;;
  *) echo "run-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
cd "$root"
scripts/ensure-toolchain.sh
scripts/ensure-services.sh
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for svc in "NATS 4222" "Redis 6379" "PostgreSQL 5432"; do
  set -- $svc
  up "$2" || { echo "run-cluster: $1 is not listening on 127.0.0.1:$2; start it first" >&2; exit 1; }
done

demo="$root/target/cluster-demo"
rm -rf "$demo/hosts"
mkdir -p "$demo/hosts"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

# With the kafka feature, as scripts/test.sh builds it: one build serves both.
cargo build -q -p modhost --features kafka
bin="$root/target/debug/modhost"
for host in a:blog b:billing c:notifications; do
  scripts/build-plugins.sh --out "$demo/hosts/${host%%:*}/modules" "plugins/${host#*:}" >/dev/null
done

if ! up 2379; then
  mkdir -p "$demo/etcd"
  etcd --name demo --data-dir "$demo/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 >"$demo/etcd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do up 2379 && break; sleep 0.1; done
  up 2379 || { echo "run-cluster: etcd did not start; see $demo/etcd.log" >&2; exit 1; }
fi

db="modhost_demo"
psql -q -h 127.0.0.1 -U postgres -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
export MODHOST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export MODHOST_REGISTRY_URL=etcd://127.0.0.1:2379
export MODHOST_EVENT_BUS_URL=nats://127.0.0.1:4222
export MODHOST_CACHE_URL=redis://127.0.0.1:6379
export MODHOST_CLUSTER_NAME=demo
export MODHOST_CORE_URL=http://127.0.0.1:8090
export MODHOST_WATCH=false

"$bin" core --data-dir "$demo/core" --grpc-listen 127.0.0.1:8090 >"$demo/core.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do up 8090 && break; sleep 0.1; done
# Started in dependency order: each host waits (dependency_wait) for what it needs.
port=8081
for host in b a c; do
  case $host in a) port=8081 ;; b) port=8082 ;; c) port=8083 ;; esac
  MODHOST_HOST_ID="host-$host" "$bin" run --modules "$demo/hosts/$host/modules" \
    --data-dir "$demo/hosts/$host/data" --listen "127.0.0.1:$port" >"$demo/host-$host.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "run-cluster: host $host did not get ready; see $demo/host-$host.log" >&2; exit 1; }
  echo "run-cluster: host-$host ready on http://127.0.0.1:$port (log: $demo/host-$host.log)"
done
token=$("$bin" admin token --ttl 1h --data-dir "$demo/core")
echo "run-cluster: an operator token: export TOKEN=$token"

if [ -n "$check" ]; then
  title="cluster check $$"
  curl -sf -X POST -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"title\":\"$title\"}" http://127.0.0.1:8081/api/v1/blog/posts >/dev/null
  for _ in $(seq 1 200); do
    if curl -sf -H "authorization: Bearer $token" http://127.0.0.1:8083/api/v1/notifications/notifications | grep -q "$title"; then
      echo "run-cluster: ok: a post created on host-a was notified on host-c"
      curl -sf -H "authorization: Bearer $token" http://127.0.0.1:8081/admin/cluster |
        python3 -c 'import json,sys; print("run-cluster: hosts:", ", ".join(h["host_id"] for h in json.load(sys.stdin)["hosts"]))'
      exit 0
    fi
    sleep 0.1
  done
  echo "run-cluster: the post did not reach host-c; see $demo/host-*.log" >&2
  exit 1
fi
echo "run-cluster: Ctrl-C stops the cluster"
wait
