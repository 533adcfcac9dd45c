#!/usr/bin/env bash
# Makes sure the local PostgreSQL the tests use (127.0.0.1:5432) is running; starts the
# machine's cluster if it is installed but stopped. Installs the cluster engines' servers
# (etcd and etcdctl, nats-server, redis-server) from Debian's packages, and the Kafka-protocol
# broker noida-db from PyPI (pinned by hash), where they are missing: the
# cluster tests start their own instances of them on free ports. Prints what it did.
# Without PostgreSQL or an engine the tests that need it print SKIP lines (and fail
# under CI, where all are required).
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "ensure-services: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
      echo "ensure-services: could not install ${missing[*]}; the cluster tests will be skipped outside CI" >&2
  else
    echo "ensure-services: please install ${missing[*]} for the cluster tests" >&2
  fi
fi
# The Kafka-protocol broker for the Kafka engine's tests: noida-db from PyPI, pinned by
# hash (scripts/kafka-broker.txt).
if ! command -v noida-db >/dev/null 2>&1; then
  if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
    echo "ensure-services: installing noida-db (scripts/kafka-broker.txt)"
    "$(command -v pip3 || command -v pip)" install -q --require-hashes -r "$(dirname "$0")/kafka-broker.txt" ||
      echo "ensure-services: could not install noida-db; the Kafka tests will be skipped outside CI" >&2
    command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
  else
    echo "ensure-services: please install pip, then noida-db (scripts/kafka-broker.txt), for the Kafka tests" >&2
  fi
fi
for tool in etcd etcdctl nats-server redis-server noida-db; do
  command -v "$tool" >/dev/null 2>&1 && echo "ensure-services: $tool is $(command -v "$tool")"
done

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
