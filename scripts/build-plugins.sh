#!/usr/bin/env bash
# Builds the example plugins and packages each into <out>/<name>/ (module.yaml + library).
#
#   scripts/build-plugins.sh [--release] [--out DIR] [PLUGIN_DIR ...]
#
# Default: every crate under plugins/ that has a module.yaml, a debug build, out=modules/.
# The library is copied next to its manifest through a temporary file and a rename, so
# a running host never sees a half-written library. With --release its debug info is
# stripped.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
profile=debug
cargo_flags=()
out="$root/modules"
plugins=()

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release; cargo_flags+=(--release) ;;
    --out) [ $# -ge 2 ] || { echo "build-plugins: --out needs a directory" >&2; exit 2; }; out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "build-plugins: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) plugins+=("$1") ;;
  esac
  shift
done

if [ ${#plugins[@]} -eq 0 ]; then
  for d in "$root"/plugins/*/; do
    [ -f "$d/module.yaml" ] && plugins+=("${d%/}")
  done
fi

case "$(uname -s)" in
  Darwin) prefix=lib; ext=dylib ;;
  MINGW*|MSYS*|CYGWIN*) prefix=""; ext=dll ;;
  *) prefix=lib; ext=so ;;
esac

crate_name() { # the [package] name of a Cargo.toml
  awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && /^name *=/{print $2; exit}' "$1/Cargo.toml"
}

packages=()
for p in "${plugins[@]}"; do
  [ -f "$p/Cargo.toml" ] || { echo "build-plugins: $p has no Cargo.toml" >&2; exit 2; }
  [ -f "$p/module.yaml" ] || { echo "build-plugins: $p has no module.yaml" >&2; exit 2; }
  packages+=(-p "$(crate_name "$p")")
done

(cd "$root" && cargo build ${cargo_flags[@]+"${cargo_flags[@]}"} "${packages[@]}")

target="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$out"
for p in "${plugins[@]}"; do
  crate="$(crate_name "$p")"
  lib="$target/$profile/${prefix}${crate//-/_}.$ext"
  name="$(awk '/^name:/{print $2; exit}' "$p/module.yaml")"
  dest="$out/$name"
  mkdir -p "$dest"
  cp "$p/module.yaml" "$dest/.module.yaml.tmp" && mv -f "$dest/.module.yaml.tmp" "$dest/module.yaml"
  tmp="$dest/.$(basename "$lib").tmp"
  cp "$lib" "$tmp"
  # Release packages ship without debug info: ~8x smaller, so every load (the host copies
  # each library it loads) is ~8x cheaper. Panic messages keep their file:line.
  if [ "$profile" = release ] && command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$tmp"
  fi
  mv -f "$tmp" "$dest/$(basename "$lib")"
  if [ -d "$p/migrations" ]; then
    rm -rf "$dest/migrations" && cp -r "$p/migrations" "$dest/migrations"
  fi
  echo "packaged $name -> $dest"
done
