#!/usr/bin/env bash
# Makes sure this machine can build modhost: a Rust toolchain (>= 1.85) with rustfmt and
# clippy, a C compiler for linking, protoc (the etcd client's build script compiles
# etcd's .proto files with it) and make (the Kafka feature builds librdkafka). Installs what is missing, or says what to do.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# librdkafka (the `kafka` feature, on in CI) is built from its bundled source with make.
command -v make >/dev/null 2>&1 || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "ensure-toolchain: installing ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "ensure-toolchain: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "ensure-toolchain: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
