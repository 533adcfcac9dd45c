#!/usr/bin/env bash
# Runs schemathesis (installed from PyPI if missing) against a live modhost's
# /openapi.json, with the example modules and an operator token, for a bounded number of
# examples. Fails on any 5xx, undocumented status code, wrong content type or response
# that violates the documented schema.
#
#   scripts/schemathesis.sh [--examples N]    (default 15 per operation)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
examples=15
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --examples) examples="$2" ;;
esac
cd "$root"
# Run through the interpreter, so a freshly installed package needs no PATH shim.
if ! python3 -c "import schemathesis" >/dev/null 2>&1; then
  python3 -m pip install -q schemathesis
fi
tmp=$(mktemp -d)
scripts/build-plugins.sh --out "$tmp/modules" >/dev/null
cargo build -q -p modhost
MODHOST_WATCH=false RUST_LOG=warn target/debug/modhost run --modules "$tmp/modules" --data-dir "$tmp/data" --listen 127.0.0.1:18399 >"$tmp/host.log" 2>&1 &
host=$!
trap 'kill $host 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/18399) 2>/dev/null && break
  sleep 0.1
done
token=$("$root/target/debug/modhost" admin token --ttl 30m --data-dir "$tmp/data" 2>/dev/null)
# /auth/revoke is excluded: it would revoke the token the run uses.
# Run from the scratch dir so schemathesis' cache stays out of the repository.
cd "$tmp"
python3 -m schemathesis.cli run http://127.0.0.1:18399/openapi.json \
  -H "Authorization: Bearer $token" \
  --exclude-path /api/v1/auth/revoke \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --seed 1
