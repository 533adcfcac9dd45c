#!/usr/bin/env bash
# The plugin developer's loop: runs modhost with --watch on modules/ and rebuilds a
# plugin whenever its sources, manifest or migrations change; the running host picks
# up each new build within a second (hot reload, no restart).
#
#   scripts/dev.sh plugins/NAME [more plugin dirs] [-- extra `modhost run` arguments]
#
# Stop it with Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
plugins=(); run_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; run_args=("$@"); break ;;
    *) plugins+=("$1") ;;
  esac
  shift
done
[ ${#plugins[@]} -gt 0 ] || { usage >&2; exit 2; }
cd "$root"
scripts/build-plugins.sh "${plugins[@]}"
cargo build -q -p modhost
target/debug/modhost run --watch ${run_args[@]+"${run_args[@]}"} &
host=$!
trap 'kill $host 2>/dev/null; wait $host 2>/dev/null' EXIT INT TERM

stamp=$(mktemp)
while kill -0 "$host" 2>/dev/null; do
  sleep 1
  changed=()
  for p in "${plugins[@]}"; do
    if [ -n "$(find "$p/src" "$p/module.yaml" "$p/Cargo.toml" "$p/build.rs" "$p/migrations" -newer "$stamp" 2>/dev/null | head -n 1)" ]; then
      changed+=("$p")
    fi
  done
  touch "$stamp"
  if [ ${#changed[@]} -gt 0 ]; then
    echo "dev: rebuilding ${changed[*]}"
    scripts/build-plugins.sh "${changed[@]}" || echo "dev: build failed; the running version keeps serving"
  fi
done
