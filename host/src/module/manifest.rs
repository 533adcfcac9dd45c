//! `module.yaml`: the manifest format, its parser and its validation.
//!
//! Manifests come from third parties, so parsing is defensive: the file size is capped
//! before parsing, YAML alias expansion and nesting depth are bounded by the parser, and
//! every error carries the file, line:column and field. This file knows nothing about
//! libraries on disk or other modules; see `discovery.rs` and `resolve.rs`.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read,
    path::{Path, PathBuf},
};

use semver::{Version, VersionReq};
use serde::{de, Deserialize, Deserializer, Serialize};

/// The manifest's file name inside a module folder.
pub const MANIFEST_FILE: &str = "module.yaml";
/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Longest module name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A parsed and validated `module.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique module name, `[a-z][a-z0-9_]*`.
    pub name: ModuleName,
    /// The module's version.
    pub version: Version,
    /// One line for operators.
    #[serde(default)]
    pub description: String,
    /// The shared library, relative to the module folder. Default: the single shared
    /// library for this platform in the folder.
    #[serde(default)]
    pub library: Option<String>,
    /// The library's SHA-256 (hex); when set, the host refuses a library that differs.
    #[serde(default, deserialize_with = "deserialize_sha256")]
    pub sha256: Option<String>,
    /// Other modules this one needs, with semver requirements.
    #[serde(default, deserialize_with = "deserialize_dependencies")]
    pub dependencies: BTreeMap<ModuleName, Dependency>,
    /// Permissions this module declares, `<module>.<resource>.<action>`.
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Event topics the module publishes and subscribes to.
    #[serde(default)]
    pub events: Events,
    /// Services this module provides to others, `<module>.<resource>.<action>`.
    #[serde(default)]
    pub services: Vec<Permission>,
    /// Routes anyone may call without a token: `"GET /api/v1/<name>/..."`, exactly as
    /// the module registers them.
    #[serde(default)]
    pub public_routes: Vec<String>,
    /// Config defaults, handed to the module merged with the host's overrides.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Where the vendor suggests the module runs; the operator's `isolation` setting
    /// for the module overrides it.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// SHA-256 (hex) of the manifest text this was parsed from: what a signature over
    /// the manifest must cover.
    #[serde(skip)]
    pub source_sha256: String,
}

/// Where a module's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the host's process: fastest; a crash of the module is a crash of the host.
    InProcess,
    /// In a worker process of its own (`modhost worker`): a crash, abort or runaway
    /// allocation ends only that process.
    Process,
}

impl Isolation {
    /// The setting's text: `in-process` or `process`.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        }
    }

    /// Parses `in-process` or `process`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "in-process" => Ok(Isolation::InProcess),
            "process" => Ok(Isolation::Process),
            _ => Err("expected in-process or process".into()),
        }
    }
}

/// Module names the host keeps for itself (its API namespaces and database areas) or
/// that PostgreSQL keeps (schema names; `pg_*` too, see [`ModuleName::parse`]).
pub const RESERVED_NAMES: &[&str] = &[
    "core",
    "auth",
    "identity",
    "authz",
    "audit",
    "admin",
    "public",
    "information_schema",
];

/// The fields a manifest may have, for "did you mean" hints.
const MANIFEST_FIELDS: &[&str] = &[
    "name",
    "version",
    "description",
    "library",
    "sha256",
    "dependencies",
    "permissions",
    "events",
    "services",
    "public_routes",
    "config",
    "isolation",
];

/// A validated module name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ModuleName(String);

impl ModuleName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if RESERVED_NAMES.contains(&name) || name.starts_with("pg_") {
            return Err(format!(
                "module name `{name}` is reserved for the host or its database ({}, pg_*); pick another name",
                RESERVED_NAMES.join(", ")
            ));
        }
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "module name `{}…` is {} characters long; the limit is {MAX_NAME_LEN}",
                &name[..name.char_indices().nth(20).map_or(name.len(), |(i, _)| i)],
                name.len()
            ));
        }
        if !first_ok || !rest_ok {
            return Err(format!(
                "invalid module name `{}`: it must start with a lower-case letter and use only \
                 a-z, 0-9 and _",
                name.escape_debug()
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModuleName::parse(&s).map_err(de::Error::custom)
    }
}

/// A dependency on another module: `billing: ">=1.0, <2"` or
/// `billing: { version: ">=1.0", optional: true }`.
#[derive(Debug, Clone, Serialize)]
pub struct Dependency {
    pub version: VersionReq,
    pub optional: bool,
}

impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DepVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            version: VersionReq,
            #[serde(default)]
            optional: bool,
        }

        impl<'de> de::Visitor<'de> for DepVisitor {
            type Value = Dependency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a semver requirement such as \">=1.0, <2\", or a map with `version` and \
                     `optional`",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dependency, E> {
                let version = VersionReq::parse(v)
                    .map_err(|e| E::custom(format!("invalid version requirement \"{v}\": {e}")))?;
                Ok(Dependency {
                    version,
                    optional: false,
                })
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Dependency, A::Error> {
                let long = Long::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Dependency {
                    version: long.version,
                    optional: long.optional,
                })
            }
        }

        d.deserialize_any(DepVisitor)
    }
}

fn deserialize_sha256<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let hex = s.trim().to_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(de::Error::custom(format!(
            "invalid sha256 `{s}`: expected 64 hex characters, as printed by `sha256sum LIBRARY`"
        )));
    }
    Ok(Some(hex))
}

/// Refuses duplicate keys, which a plain map would silently overwrite.
fn deserialize_dependencies<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<ModuleName, Dependency>, D::Error> {
    struct DepsVisitor;

    impl<'de> de::Visitor<'de> for DepsVisitor {
        type Value = BTreeMap<ModuleName, Dependency>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from module name to version requirement")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(name) = map.next_key::<ModuleName>()? {
                let dep = map.next_value::<Dependency>()?;
                if out.insert(name.clone(), dep).is_some() {
                    return Err(de::Error::custom(format!(
                        "dependency `{name}` is listed twice"
                    )));
                }
            }
            Ok(out)
        }
    }

    d.deserialize_any(DepsVisitor)
}

/// A permission name, `<module>.<resource>.<action>`, each segment lower snake case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Permission(String);

impl Permission {
    /// Validates the format (not the namespace: that needs the module's name).
    pub fn parse(s: &str) -> Result<Self, String> {
        let segments: Vec<&str> = s.split('.').collect();
        let ok = segments.len() == 3 && segments.iter().all(|seg| is_snake_segment(seg));
        if !ok {
            return Err(format!(
                "invalid permission `{}`: expected `<module>.<resource>.<action>`, three \
                 lower snake case segments such as `blog.post.create`",
                s.escape_debug()
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The permission's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment: the module that owns the permission.
    pub fn namespace(&self) -> &str {
        self.0.split('.').next().unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Permission::parse(&s).map_err(de::Error::custom)
    }
}

fn is_snake_segment(seg: &str) -> bool {
    let mut chars = seg.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The `events:` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// Topics this module publishes; each starts with the module's name.
    #[serde(default)]
    pub publishes: Vec<Topic>,
    /// Topic patterns this module subscribes to: `*` matches one segment, a final `>`
    /// matches one or more.
    #[serde(default)]
    pub subscribes: Vec<Topic>,
}

/// An event topic or pattern: dot-separated `[a-z0-9_]+` segments, `*` and a final `>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    /// Validates a topic or pattern.
    pub fn parse(s: &str) -> Result<Self, String> {
        let segments: Vec<&str> = s.split('.').collect();
        let last = segments.len().saturating_sub(1);
        let ok = segments.len() >= 2
            && segments.iter().enumerate().all(|(i, seg)| {
                *seg == "*"
                    || (*seg == ">" && i == last)
                    || (!seg.is_empty()
                        && seg
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            });
        if !ok {
            return Err(format!(
                "invalid event topic `{}`: expected two or more dot-separated segments of \
                 a-z, 0-9 and _, such as `blog.post.created`; `*` matches one segment and a \
                 final `>` the rest",
                s.escape_debug()
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The topic's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it holds wildcards.
    pub fn is_pattern(&self) -> bool {
        self.0.split('.').any(|s| s == "*" || s == ">")
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::parse(&s).map_err(de::Error::custom)
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot read the manifest: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: the manifest is over the {limit}-byte limit; a module.yaml is a few hundred bytes, \
         check that this is the right file",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ManifestError {
    /// The manifest's path.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Read { path, .. }
            | ManifestError::TooLarge { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        }
    }
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let file = std::fs::File::open(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ManifestError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!(
                "the manifest is not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let blank = text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        });
        if blank {
            return Err(invalid(
                path,
                1,
                1,
                "the manifest is empty; it needs at least `name` and `version`".into(),
            ));
        }
        let mut manifest: Manifest = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            invalid(path, line, column, describe_yaml_error(&e))
        })?;
        manifest.validate(text, path)?;
        manifest.source_sha256 = crate::hex::sha256_hex(text.as_bytes());
        Ok(manifest)
    }

    /// Checks that need more than one field.
    fn validate(&self, text: &str, path: &Path) -> Result<(), ManifestError> {
        let name = self.name.as_str();
        let at = |needle: &str, message: String| {
            let (line, column) = locate(text, needle);
            invalid(path, line, column, message)
        };
        let mut seen = std::collections::BTreeSet::new();
        for (i, perm) in self.permissions.iter().enumerate() {
            if perm.namespace() != name {
                return Err(at(
                    perm.as_str(),
                    format!(
                        "permissions[{i}]: `{perm}` is outside this module's namespace; \
                         permissions of module `{name}` must start with `{name}.`",
                        perm = perm.as_str()
                    ),
                ));
            }
            if !seen.insert(perm.as_str()) {
                return Err(at(
                    perm.as_str(),
                    format!("permissions[{i}]: `{}` is declared twice", perm.as_str()),
                ));
            }
        }
        for (i, topic) in self.events.publishes.iter().enumerate() {
            let own = topic.as_str().split('.').next() == Some(name);
            if !own || topic.is_pattern() {
                return Err(at(
                    topic.as_str(),
                    format!(
                        "events.publishes[{i}]: `{}` must be a plain topic in this module's \
                         namespace, starting with `{name}.`",
                        topic.as_str()
                    ),
                ));
            }
        }
        for (i, service) in self.services.iter().enumerate() {
            if service.namespace() != name {
                return Err(at(
                    service.as_str(),
                    format!(
                        "services[{i}]: `{}` is outside this module's namespace; services of module `{name}` must start with `{name}.`",
                        service.as_str()
                    ),
                ));
            }
        }
        for (i, route) in self.public_routes.iter().enumerate() {
            let prefix = format!("/api/v1/{name}");
            let ok = route.split_once(' ').is_some_and(|(method, path)| {
                ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method)
                    && (path == prefix || path.starts_with(&format!("{prefix}/")))
            });
            if !ok {
                return Err(at(
                    route,
                    format!(
                        "public_routes[{i}]: `{route}` must be `METHOD {prefix}/...` with METHOD one of GET, POST, PUT, PATCH, DELETE"
                    ),
                ));
            }
        }
        if self.dependencies.contains_key(&self.name) {
            return Err(at(
                "dependencies",
                format!("dependencies: module `{name}` cannot depend on itself"),
            ));
        }
        if let Some(lib) = &self.library {
            if let Err(why) = check_library_path(lib) {
                return Err(at(lib, format!("library: {why}")));
            }
        }
        Ok(())
    }
}

/// Lexical checks on `library:`; `discovery.rs` also checks symlinks on disk.
pub fn check_library_path(lib: &str) -> Result<(), String> {
    let p = Path::new(lib);
    if lib.trim().is_empty() {
        return Err("the library path is empty".into());
    }
    if p.is_absolute() || lib.starts_with('/') || lib.starts_with('\\') {
        return Err(format!(
            "`{lib}` is an absolute path; name a file inside the module folder instead"
        ));
    }
    if p.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(format!(
            "`{lib}` leaves the module folder; name a file inside the module folder instead"
        ));
    }
    Ok(())
}

fn invalid(path: &Path, line: usize, column: usize, message: String) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// The first `line:column` (1-based) where `needle` appears outside a comment, or `1:1`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| {
            let code = match line.find('#') {
                Some(0) => "",
                Some(at) if line[..at].ends_with(char::is_whitespace) => &line[..at],
                _ => line,
            };
            code.find(needle).map(|col| (i + 1, col + 1))
        })
        .unwrap_or((1, 1))
}

/// The parser's message without its trailing position, plus a "did you mean" hint for
/// unknown fields.
fn describe_yaml_error(e: &serde_yaml_ng::Error) -> String {
    let mut message = e.to_string();
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    if let Some(rest) = message.split("unknown field `").nth(1) {
        if let Some(field) = rest.split('`').next() {
            let candidates = candidates_after(&message);
            if let Some(best) = did_you_mean(field, &candidates) {
                message.push_str(&format!(" (did you mean `{best}`?)"));
            }
        }
    }
    if message.contains("repetition limit exceeded") || message.contains("recursion limit exceeded")
    {
        message.push_str(" (YAML aliases or nesting expand too far; a manifest needs neither)");
    }
    message
}

/// The names listed after "expected one of" in a serde unknown-field message.
fn candidates_after(message: &str) -> Vec<String> {
    let Some(list) = message
        .split("expected one of ")
        .nth(1)
        .or_else(|| message.split("expected ").nth(1))
    else {
        return MANIFEST_FIELDS.iter().map(|s| s.to_string()).collect();
    };
    list.split(',')
        .filter_map(|item| item.trim().trim_start_matches("or ").split('`').nth(1))
        .map(str::to_string)
        .collect()
}

/// The closest candidate to `input`, if any is close enough to be a likely typo.
pub fn did_you_mean<S: AsRef<str>>(input: &str, candidates: &[S]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(input, c.as_ref()), c.as_ref()))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}
