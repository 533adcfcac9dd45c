#!/usr/bin/env bash
# Runs schemathesis (the pinned version, installed from PyPI if missing or different)
# against a live modhost's /openapi.json, with the example modules and an operator token,
# for a bounded number of examples. The host listens on a free port chosen at run time.
# Fails on any 5xx, undocumented status code, wrong content type or response that
# violates the documented schema, and if the host does not come up (printing its log).
#
#   scripts/schemathesis.sh [--examples N]    (default 15 per operation; the seed is
#                                             SCHEMATHESIS_SEED, default 1)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
examples=15
# The schemathesis release this script is tested with; bump it deliberately.
schemathesis_version=4.32.5
# How long the host may take to start serving.
ready_seconds=60
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --examples) examples="$2" ;;
esac
cd "$root"
# Run through the interpreter, so a freshly installed package needs no PATH shim.
installed=$(python3 -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [ "$installed" != "$schemathesis_version" ]; then
  echo "schemathesis.sh: installing schemathesis==$schemathesis_version (found: ${installed:-none})"
  python3 -m pip install -q "schemathesis==$schemathesis_version"
fi
tmp=$(mktemp -d)
host=""
cleanup() {
  if [ -n "$host" ]; then kill "$host" 2>/dev/null || true; wait "$host" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
scripts/build-plugins.sh --out "$tmp/modules" >/dev/null
cargo build -q -p modhost
# Port 0: the system picks a free port; the host logs the address it got.
NO_COLOR=1 MODHOST_WATCH=false RUST_LOG=warn,modhost::app=info target/debug/modhost run \
  --modules "$tmp/modules" --data-dir "$tmp/data" --listen 127.0.0.1:0 >"$tmp/host.log" 2>&1 &
host=$!
base=""
deadline=$((SECONDS + ready_seconds))
while [ -z "$base" ]; do
  base=$(grep -o 'modhost ready on http://[0-9.:]*' "$tmp/host.log" | head -n 1 | sed 's/^modhost ready on //' || true)
  [ -n "$base" ] && break
  if ! kill -0 "$host" 2>/dev/null; then
    echo "schemathesis.sh: modhost exited before it was ready; its log:" >&2
    cat "$tmp/host.log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "schemathesis.sh: modhost was not ready after ${ready_seconds} s; its log:" >&2
    cat "$tmp/host.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "schemathesis.sh: modhost ready on $base"
if ! token=$("$root/target/debug/modhost" admin token --ttl 30m --data-dir "$tmp/data" 2>"$tmp/token.err"); then
  echo "schemathesis.sh: modhost admin token failed:" >&2
  cat "$tmp/token.err" >&2
  exit 1
fi
# /auth/revoke is excluded: it would revoke the token the run uses.
# Run from the scratch dir so schemathesis' cache stays out of the repository.
cd "$tmp"
# positive_data_acceptance: a request the document calls valid must not be refused as
# invalid (400, 413, 422). Its expected statuses are schemathesis' defaults plus 402: the
# blog answers it for a premium post read without the premium plan, a valid request.
cat > schemathesis.toml <<'TOML'
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]
TOML
python3 -m schemathesis.cli --config-file schemathesis.toml run "$base/openapi.json" \
  -H "Authorization: Bearer $token" \
  --exclude-path /api/v1/auth/revoke \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance \
  --max-examples "$examples" --seed "${SCHEMATHESIS_SEED:-1}"
