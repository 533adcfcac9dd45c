#!/usr/bin/env bash
# Makes sure the local PostgreSQL the tests use (127.0.0.1:5432) is running; starts the
# machine's cluster if it is installed but stopped. Prints what it did. Without a
# PostgreSQL installation it says so; the PostgreSQL tests then print SKIP lines (and
# fail under CI, where PostgreSQL is required).
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -h 127.0.0.1 -p 5432 -q
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

if pg_up; then
  echo "ensure-services: PostgreSQL is up on 127.0.0.1:5432"
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    echo "ensure-services: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 30); do
    pg_up && { echo "ensure-services: PostgreSQL is up"; exit 0; }
    sleep 1
  done
  echo "ensure-services: PostgreSQL did not come up on 127.0.0.1:5432" >&2
  exit 1
fi
echo "ensure-services: no PostgreSQL on this machine; PostgreSQL tests will be skipped outside CI" >&2
exit 0
