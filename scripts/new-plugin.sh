#!/usr/bin/env bash
# Scaffolds a new modhost plugin crate with its module.yaml.
#
#   scripts/new-plugin.sh NAME              # plugins/NAME, added to this workspace
#   scripts/new-plugin.sh NAME --dir DIR    # a standalone crate in DIR (vendors), using
#                                           # this checkout's plugin-api by path
#
# NAME: a lower-case letter, then a-z, 0-9 or _. Then package it (release build,
# module.yaml, migrations/, optional signature) and install the package:
#   modhost package DIR --out dist [--sign vendor.key]
#   modhost install dist/NAME-0.1.0.tar.gz --modules modules
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

name=""; dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dir) [ $# -ge 2 ] || { echo "new-plugin: --dir needs a directory" >&2; exit 2; }; dir="$2"; shift ;;
    -*) echo "new-plugin: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$name" ] || { echo "new-plugin: one NAME only" >&2; exit 2; }; name="$1" ;;
  esac
  shift
done
[ -n "$name" ] || { usage >&2; exit 2; }
if ! [[ "$name" =~ ^[a-z][a-z0-9_]*$ ]] || [ ${#name} -gt 64 ]; then
  echo "new-plugin: invalid NAME '$name': use a lower-case letter, then a-z, 0-9 or _ (at most 64)" >&2
  exit 2
fi

standalone=false
if [ -z "$dir" ]; then dir="$root/plugins/$name"; else standalone=true; fi
if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  echo "new-plugin: $dir already exists and is not empty; pick another NAME or --dir" >&2
  exit 1
fi
mkdir -p "$dir/src"

if $standalone; then
  api_path="$root/plugin-api"
  api="modhost-plugin-api = { path = \"$api_path\" }"
  edition='edition = "2021"'
  workspace=$'\n[workspace]\n'
else
  api_path="../../plugin-api"
  api="modhost-plugin-api.workspace = true"
  edition="edition.workspace = true"
  workspace=""
fi

cat > "$dir/Cargo.toml" <<TOML
[package]
name = "$name"
version = "0.1.0"
publish = false
$edition

[lib]
crate-type = ["cdylib"]

[dependencies]
$api
serde_json = "1"
tracing = "0.1"

[build-dependencies]
modhost-plugin-api = { path = "$api_path", default-features = false, features = ["build"] }
$workspace
TOML

cat > "$dir/build.rs" <<'RUST'
//! Generates `permissions::*` constants from module.yaml.

fn main() -> Result<(), String> {
    modhost_plugin_api::build::generate_permissions()
}
RUST

cat > "$dir/module.yaml" <<YAML
name: $name
version: 0.1.0
description: The $name module
permissions:
  - $name.greeting.read
config:
  greeting: Hello
YAML

cat > "$dir/src/lib.rs" <<RUST
//! The \`$name\` module.

use modhost_plugin_api::prelude::*;
use serde_json::json;

// permissions::GREETING_READ and friends, generated from module.yaml by build.rs.
modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Plugin;

impl Module for Plugin {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let greeting = ctx.config_value()["greeting"].as_str().unwrap_or("Hello").to_string();
        ctx.route(Method::Get, "/api/v1/$name/hello", permissions::GREETING_READ, move |_req| {
            let body = json!({ "message": format!("{greeting} from $name") });
            async move { Response::json(200, &body) }
        })?;
        tracing::info!("$name ready");
        Ok(())
    }
}

modhost_plugin_api::export_module!(Plugin);
RUST

if $standalone; then
  cat > "$dir/.gitignore" <<'IGNORE'
# Build output and packages; Cargo.lock stays (a module is a binary: pin its build).
/target
/dist
IGNORE
fi

if ! $standalone; then
  python3 - "$root/Cargo.toml" "plugins/$name" <<'PY'
import sys
path, member = sys.argv[1], sys.argv[2]
text = open(path).read()
if f'"{member}"' not in text:
    text = text.replace("members = [\n", f'members = [\n    "{member}",\n', 1)
    open(path, "w").write(text)
PY
fi
echo "created $dir"
echo "next: modhost package $dir --out dist    # release build + module.yaml + migrations/ (add --sign vendor.key)"
echo "      modhost install dist/$name-0.1.0.tar.gz --modules modules"
