//! Host configuration: defaults, an optional TOML file, then `MODHOST_*` environment
//! variables; command-line flags are applied on top by `cli.rs`.
//!
//! [`SETTINGS`] is the one list of settings, each with its parser; the file, the
//! environment and the flags all go through it. README's "Configuration" section shows
//! every setting with its default (a test checks that the two agree).

/// The trust policy the config describes (`trusted_keys`, `require_signatures`).
pub use crate::module::signing::TrustPolicy;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How the modules directory is watched (see `runtime/watch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// File-system events (inotify on Linux), acted on after `watch_settle`.
    Events,
    /// Listing the directory every `watch_interval`; for file systems without events.
    Poll,
}

/// The effective host configuration.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub listen: SocketAddr,
    pub modules_dir: PathBuf,
    pub data_dir: PathBuf,
    pub strict: bool,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    pub init_timeout: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_body_bytes: u64,
    /// Module responses larger than this are replaced by a 500.
    pub max_response_bytes: u64,
    /// Vendor public keys (hex) whose signatures the host accepts.
    pub trusted_keys: Vec<String>,
    /// Refuse modules without a valid signature from a trusted key.
    pub require_signatures: bool,
    /// `None`: embedded SQLite files under `data_dir/db`.
    pub database_url: Option<String>,
    pub database_connect_timeout: Duration,
    pub database_max_connections: u32,
    pub postgres_role_prefix: String,
    pub auth: crate::core::AuthSettings,
    /// Core services over gRPC (`core_url`); absent: embedded.
    pub core: crate::core::remote::RemoteSettings,
    pub events: crate::events::BusSettings,
    /// Upper bound of the cache's memory, keys and values.
    pub cache_max_bytes: u64,
    pub cache_default_ttl: Duration,
    /// Watch the modules directory and apply changes live.
    pub watch: bool,
    pub watch_mode: WatchMode,
    /// Events mode: how long a folder must be quiet before it is looked at.
    pub watch_settle: Duration,
    /// Poll mode: how often the directory is listed.
    pub watch_interval: Duration,
    /// Per-module config overrides, merged over each manifest's `config:`.
    pub module_overrides: BTreeMap<String, serde_json::Value>,
    /// Which modules run in worker processes, their limits and restart policy.
    pub isolation: crate::isolation::settings::IsolationSettings,
    /// Cluster mode: the engines' URLs and this host's identity (all absent: embedded).
    pub cluster: crate::cluster::settings::ClusterSettings,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            modules_dir: PathBuf::from("modules"),
            data_dir: PathBuf::from("data"),
            strict: false,
            log_format: LogFormat::Text,
            shutdown_timeout: Duration::from_secs(30),
            init_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            trusted_keys: Vec::new(),
            require_signatures: false,
            database_url: None,
            database_connect_timeout: Duration::from_secs(30),
            database_max_connections: 5,
            postgres_role_prefix: "modhost_".to_string(),
            auth: crate::core::AuthSettings::default(),
            core: crate::core::remote::RemoteSettings::default(),
            events: crate::events::BusSettings::default(),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_default_ttl: Duration::from_secs(300),
            // On in development builds, off in release builds.
            watch: cfg!(debug_assertions),
            watch_mode: WatchMode::Events,
            watch_settle: Duration::from_millis(50),
            watch_interval: Duration::from_millis(250),
            module_overrides: BTreeMap::new(),
            isolation: crate::isolation::settings::IsolationSettings::default(),
            cluster: crate::cluster::settings::ClusterSettings::default(),
        }
    }
}

/// How one setting is read from text (a file value, an environment variable, a flag).
type Setter = fn(&mut HostConfig, &str) -> Result<(), String>;

/// Every setting, by the name it has in the file; its environment variable is
/// `MODHOST_<NAME>`. The one list of settings: the file, the environment and the
/// command line all go through it.
const SETTINGS: &[(&str, Setter)] = &[
    ("listen", |c, v| {
        c.listen = v
            .parse()
            .map_err(|_| "expected an address such as 127.0.0.1:8080".to_string())?;
        Ok(())
    }),
    ("modules_dir", |c, v| {
        c.modules_dir = PathBuf::from(v);
        Ok(())
    }),
    ("data_dir", |c, v| {
        c.data_dir = PathBuf::from(v);
        Ok(())
    }),
    ("strict", |c, v| {
        c.strict = parse_bool(v)?;
        Ok(())
    }),
    ("log_format", |c, v| {
        c.log_format = match v {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err("expected text or json".into()),
        };
        Ok(())
    }),
    ("shutdown_timeout", |c, v| {
        c.shutdown_timeout = parse_duration(v)?;
        Ok(())
    }),
    ("init_timeout", |c, v| {
        c.init_timeout = parse_duration(v)?;
        Ok(())
    }),
    ("request_timeout", |c, v| {
        c.request_timeout = parse_duration(v)?;
        Ok(())
    }),
    ("header_read_timeout", |c, v| {
        c.header_read_timeout = parse_duration(v)?;
        Ok(())
    }),
    ("max_body_bytes", |c, v| {
        c.max_body_bytes = parse_bytes(v)?;
        Ok(())
    }),
    ("max_response_bytes", |c, v| {
        c.max_response_bytes = parse_bytes(v)?;
        Ok(())
    }),
    ("trusted_keys", |c, v| {
        c.trusted_keys = parse_keys(v)?;
        Ok(())
    }),
    ("require_signatures", |c, v| {
        c.require_signatures = parse_bool(v)?;
        Ok(())
    }),
    ("database_url", |c, v| {
        c.database_url = Some(v.trim().to_string()).filter(|url| !url.is_empty());
        Ok(())
    }),
    ("database_connect_timeout", |c, v| {
        c.database_connect_timeout = parse_duration(v)?;
        Ok(())
    }),
    ("database_max_connections", |c, v| {
        c.database_max_connections = parse_positive(v)?;
        Ok(())
    }),
    ("postgres_role_prefix", |c, v| {
        let ok = v
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
        if !ok || v.is_empty() {
            return Err("use a-z, 0-9 and _ only".into());
        }
        c.postgres_role_prefix = v.to_string();
        Ok(())
    }),
    ("auth_signing_seed", |c, v| {
        crate::core::tokens::SigningKey::from_hex(v)?;
        c.auth.signing_key = Some(v.trim().to_string());
        Ok(())
    }),
    ("auth_token_ttl", |c, v| {
        c.auth.access_ttl = parse_duration(v)?;
        Ok(())
    }),
    ("auth_refresh_ttl", |c, v| {
        c.auth.refresh_ttl = parse_duration(v)?;
        Ok(())
    }),
    ("core_url", |c, v| {
        let v = v.trim();
        if v.is_empty() {
            c.core.url = None;
            return Ok(());
        }
        crate::core::remote::CoreAddresses::parse(v)?;
        c.core.url = Some(v.to_string());
        Ok(())
    }),
    ("core_staleness", |c, v| {
        c.core.staleness = parse_duration(v)?;
        Ok(())
    }),
    ("core_timeout", |c, v| {
        c.core.timeout = parse_duration(v)?;
        Ok(())
    }),
    ("core_tls_ca", |c, v| {
        c.core.tls_ca = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        Ok(())
    }),
    ("core_tls_cert", |c, v| {
        c.core.tls_cert = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        Ok(())
    }),
    ("core_tls_key", |c, v| {
        c.core.tls_key = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        Ok(())
    }),
    ("audit_spool_max_bytes", |c, v| {
        c.core.spool_max_bytes = parse_bytes(v)?;
        Ok(())
    }),
    ("event_queue_capacity", |c, v| {
        c.events.queue_capacity = parse_positive(v)?;
        Ok(())
    }),
    ("event_max_retries", |c, v| {
        let n: u32 = v.parse().map_err(|_| "expected a number".to_string())?;
        if n > 100 {
            return Err("at most 100 (each retry waits twice as long as the last)".into());
        }
        c.events.max_retries = n;
        Ok(())
    }),
    ("event_retry_backoff", |c, v| {
        let d = parse_duration(v)?;
        if d > Duration::from_secs(3600) {
            return Err("at most 1h (it doubles with each retry)".into());
        }
        c.events.retry_backoff = d;
        Ok(())
    }),
    ("event_handler_timeout", |c, v| {
        let d = parse_duration(v)?;
        if d > Duration::from_secs(24 * 3600) {
            return Err("at most 24h".into());
        }
        c.events.handler_timeout = d;
        Ok(())
    }),
    ("cache_max_bytes", |c, v| {
        c.cache_max_bytes = parse_bytes(v)?;
        Ok(())
    }),
    ("cache_default_ttl", |c, v| {
        c.cache_default_ttl = parse_duration(v)?;
        Ok(())
    }),
    ("watch", |c, v| {
        c.watch = parse_bool(v)?;
        Ok(())
    }),
    ("watch_mode", |c, v| {
        c.watch_mode = match v {
            "events" => WatchMode::Events,
            "poll" => WatchMode::Poll,
            _ => return Err("expected events or poll".into()),
        };
        Ok(())
    }),
    ("watch_settle", |c, v| {
        c.watch_settle = parse_duration(v)?;
        Ok(())
    }),
    ("watch_interval", |c, v| {
        c.watch_interval = parse_duration(v)?;
        Ok(())
    }),
    ("isolation", |c, v| {
        c.isolation.default = crate::module::manifest::Isolation::parse(v)?;
        Ok(())
    }),
    ("worker_memory_limit", |c, v| {
        c.isolation.limits.memory_bytes = parse_limit(v)?;
        Ok(())
    }),
    ("worker_open_files", |c, v| {
        c.isolation.limits.open_files = parse_positive(v)?;
        Ok(())
    }),
    ("worker_landlock", |c, v| {
        c.isolation.limits.landlock = parse_bool(v)?;
        Ok(())
    }),
    ("worker_max_restarts", |c, v| {
        c.isolation.max_restarts = v
            .trim()
            .parse()
            .map_err(|_| "expected a number".to_string())?;
        Ok(())
    }),
    ("worker_restart_window", |c, v| {
        c.isolation.restart_window = parse_duration(v)?;
        Ok(())
    }),
    ("worker_restart_backoff", |c, v| {
        c.isolation.restart_backoff = parse_duration(v)?;
        Ok(())
    }),
    ("registry_url", |c, v| {
        let v = v.trim();
        c.cluster.registry = match v {
            "" => None,
            url => Some(crate::cluster::settings::parse_registry_url(url)?),
        };
        Ok(())
    }),
    ("event_bus_url", |c, v| {
        let v = v.trim();
        c.cluster.event_bus = match v {
            "" => None,
            url => Some(crate::cluster::settings::parse_event_bus_url(url)?),
        };
        Ok(())
    }),
    ("cache_url", |c, v| {
        let v = v.trim();
        c.cluster.cache = match v {
            "" => None,
            url => Some(crate::cluster::settings::parse_cache_url(url)?),
        };
        Ok(())
    }),
    ("cluster_listen", |c, v| {
        c.cluster.listen = v.trim().parse().map_err(|_| {
            "expected an address such as 127.0.0.1:7070 (port 0: any free port)".to_string()
        })?;
        Ok(())
    }),
    ("cluster_advertise", |c, v| {
        c.cluster.advertise = match v.trim() {
            "" => None,
            a => Some(a.parse().map_err(|_| {
                "expected the address other hosts reach this one at, such as 10.0.0.5:7070"
                    .to_string()
            })?),
        };
        Ok(())
    }),
    ("host_id", |c, v| {
        c.cluster.host_id = match v.trim() {
            "" => None,
            id => Some(crate::cluster::settings::parse_host_id(id)?),
        };
        Ok(())
    }),
    ("cluster_name", |c, v| {
        c.cluster.name = crate::cluster::settings::parse_cluster_name(v.trim())?;
        Ok(())
    }),
    ("registry_lease_ttl", |c, v| {
        let ttl = parse_duration(v)?;
        if ttl < Duration::from_secs(2) {
            return Err("must be at least 2s (etcd leases count whole seconds)".into());
        }
        c.cluster.lease_ttl = ttl;
        Ok(())
    }),
    ("dependency_wait", |c, v| {
        let wait = parse_duration(v)?;
        if wait > crate::cluster::settings::MAX_DEPENDENCY_WAIT {
            return Err("must be at most 24h".into());
        }
        c.cluster.dependency_wait = wait;
        Ok(())
    }),
    ("cluster_secret", |c, v| {
        c.cluster.secret = match v.trim() {
            "" => None,
            s => Some(crate::cluster::settings::parse_secret(s)?),
        };
        Ok(())
    }),
];

/// The file's table of per-module overrides.
const MODULES_TABLE: &str = "modules";

/// Every name a config file may use at its top level.
fn file_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = SETTINGS.iter().map(|(name, _)| *name).collect();
    keys.push(MODULES_TABLE);
    keys
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: `{field}` = \"{value}\" is invalid: {why}")]
    Value {
        origin: String,
        field: String,
        value: String,
        why: String,
    },
}

impl HostConfig {
    /// Defaults, then `file` (if any), then the environment as read by `env`.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HostConfig, ConfigError> {
        let mut cfg = HostConfig::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: describe_toml_error(&e, &text),
            })?;
            cfg.apply_file(table, &text, path)?;
        }
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    fn apply_file(
        &mut self,
        table: toml::Table,
        text_of_file: &str,
        path: &Path,
    ) -> Result<(), ConfigError> {
        let origin = path.display().to_string();
        for (key, value) in table {
            if key == MODULES_TABLE {
                self.apply_module_tables(value, &origin)?;
                continue;
            }
            if !SETTINGS.iter().any(|(name, _)| *name == key) {
                let hint = crate::module::manifest::did_you_mean(&key, &file_keys())
                    .map(|best| format!(" (did you mean `{best}`?)"))
                    .unwrap_or_default();
                let at = key_position(text_of_file, &key)
                    .map(|(line, column)| format!("line {line}, column {column}: "))
                    .unwrap_or_default();
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!("{at}unknown field `{key}`{hint}"),
                });
            }
            let Some(text) = setting_text(&value) else {
                return Err(ConfigError::Value {
                    origin,
                    field: key,
                    value: value.type_str().to_string(),
                    why: "expected a string, number, boolean or a list of them".into(),
                });
            };
            let origin = match key_position(text_of_file, &key) {
                Some((line, column)) => format!("{origin}, line {line}, column {column}"),
                None => origin.clone(),
            };
            self.set(&key, &text, &origin)?;
        }
        Ok(())
    }

    fn apply_module_tables(&mut self, value: toml::Value, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: String, why: String| ConfigError::Value {
            origin: origin.to_string(),
            field,
            value: String::new(),
            why,
        };
        let toml::Value::Table(modules) = value else {
            return Err(invalid(
                MODULES_TABLE.into(),
                "expected tables such as [modules.hello]".into(),
            ));
        };
        for (module, table) in modules {
            let field = format!("{MODULES_TABLE}.{module}");
            if !table.is_table() {
                return Err(invalid(field, "expected a table".into()));
            }
            let mut value =
                serde_json::to_value(&table).map_err(|e| invalid(field.clone(), e.to_string()))?;
            if let serde_json::Value::Object(map) = &mut value {
                let own = take_isolation_keys(map)
                    .map_err(|(key, why)| invalid(format!("{field}.{key}"), why))?;
                if own != crate::isolation::settings::ModuleIsolation::default() {
                    self.isolation.modules.insert(module.clone(), own);
                }
            }
            self.module_overrides.insert(module, value);
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (field, _) in SETTINGS {
            let var = format!("MODHOST_{}", field.to_uppercase());
            if let Some(value) = env(&var) {
                self.set(field, &value, &format!("environment variable {var}"))?;
            }
        }
        Ok(())
    }

    /// Sets one setting from text (file value, env var or flag), naming `origin` in
    /// errors.
    pub fn set(&mut self, field: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        // Secrets stay out of error messages: the seed and the cluster secret whole, a
        // URL's password.
        let redacted = crate::redact::url(value);
        let shown = match field {
            "auth_signing_seed" | "cluster_secret" => "<hidden>",
            _ => redacted.as_str(),
        };
        let bad = |why: String| ConfigError::Value {
            origin: origin.to_string(),
            field: field.to_string(),
            value: shown.to_string(),
            why,
        };
        let Some((_, setter)) = SETTINGS.iter().find(|(name, _)| *name == field) else {
            return Err(bad("unknown setting".into()));
        };
        setter(self, value).map_err(bad)
    }

    /// Which vendors' modules this host loads.
    pub fn trust_policy(&self) -> TrustPolicy {
        TrustPolicy {
            trusted_keys: self.trusted_keys.clone(),
            require_signatures: self.require_signatures,
        }
    }

    /// The database settings.
    pub fn database(&self) -> crate::data::database::DatabaseSettings {
        crate::data::database::DatabaseSettings {
            url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            connect_timeout: self.database_connect_timeout,
            max_connections: self.database_max_connections,
            role_prefix: self.postgres_role_prefix.clone(),
            shared: self.cluster.clustered().then(|| {
                self.cluster
                    .secret
                    .clone()
                    .or_else(|| self.database_url.clone())
                    .unwrap_or_default()
            }),
        }
    }

    /// The config handed to `module`: its manifest defaults with the host's overrides
    /// merged over them (objects merge key by key; anything else is replaced).
    pub fn module_config(
        &self,
        module: &str,
        defaults: &serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Value {
        let mut merged = serde_json::Value::Object(defaults.clone());
        if let Some(over) = self.module_overrides.get(module) {
            merge(&mut merged, over);
        }
        merged
    }
}

fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Where top-level `key` is written in the file (1-based line and column), for errors.
fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.trim_start();
        let after = rest.strip_prefix(key)?.trim_start();
        after
            .starts_with('=')
            .then(|| (i + 1, line.len() - rest.len() + 1))
    })
}

/// A file value as the text its setting parses: scalars as written, lists joined with
/// commas (as in `MODHOST_TRUSTED_KEYS`). `None` for tables and dates.
fn setting_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) => None,
                scalar => setting_text(scalar),
            })
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        _ => None,
    }
}

/// A limit in bytes; `0` or `none` means unlimited.
fn parse_limit(value: &str) -> Result<Option<u64>, String> {
    match value.trim() {
        "none" | "0" => Ok(None),
        v => parse_bytes(v).map(Some),
    }
}

/// Takes the host's own keys (isolation and worker limits) out of a `[modules.<name>]`
/// table: the rest is the module's config.
fn take_isolation_keys(
    map: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<crate::isolation::settings::ModuleIsolation, (String, String)> {
    let mut own = crate::isolation::settings::ModuleIsolation::default();
    for key in crate::isolation::settings::MODULE_KEYS {
        let Some(value) = map.remove(*key) else {
            continue;
        };
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        let bad = |why: String| (key.to_string(), format!("`{text}`: {why}"));
        match *key {
            "isolation" => {
                own.isolation = Some(crate::module::manifest::Isolation::parse(&text).map_err(bad)?)
            }
            "worker_memory_limit" => own.memory_bytes = Some(parse_limit(&text).map_err(bad)?),
            _ => own.open_files = Some(parse_positive(&text).map_err(bad)?),
        }
    }
    Ok(own)
}

fn parse_bytes(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "expected a number of bytes".to_string())
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| "expected a positive number".to_string())
}

/// Trusted vendor keys, comma-separated: each 64 hex characters.
fn parse_keys(value: &str) -> Result<Vec<String>, String> {
    let keys: Vec<String> = value
        .split(',')
        .map(|k| k.trim().to_lowercase())
        .filter(|k| !k.is_empty())
        .collect();
    match keys
        .iter()
        .find(|k| crate::hex::decode_array::<32>(k).is_none())
    {
        Some(bad) => Err(format!(
            "`{bad}` is not a public key (64 hex characters from `modhost keygen`)"
        )),
        None => Ok(keys),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 30s, 5m or 1h".to_string())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("unknown unit `{other}`; use ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let mut message = e.message().to_string();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        message = format!("line {line}, column {column}: {message}");
    }
    if let Some(rest) = message.split("unknown field `").nth(1) {
        if let Some(field) = rest.split('`').next() {
            if let Some(best) = crate::module::manifest::did_you_mean(field, &file_keys()) {
                message.push_str(&format!(" (did you mean `{best}`?)"));
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn file_then_env_then_overrides_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modhost.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nrequest_timeout = \"5s\"\n[modules.hello]\ngreeting = \"Howdy\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "MODHOST_LISTEN").then(|| "127.0.0.1:9100".to_string());
        let cfg = HostConfig::load(Some(&path), &env).unwrap();
        assert_eq!(cfg.listen.port(), 9100);
        assert_eq!(cfg.request_timeout, Duration::from_secs(5));
        let mut defaults = serde_json::Map::new();
        defaults.insert("greeting".into(), "Hello".into());
        defaults.insert("other".into(), 1.into());
        let merged = cfg.module_config("hello", &defaults);
        assert_eq!(merged, serde_json::json!({"greeting": "Howdy", "other": 1}));
    }

    #[test]
    fn module_tables_hold_isolation_settings_which_the_module_does_not_see() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modhost.toml");
        std::fs::write(
            &path,
            "worker_memory_limit = \"none\"\n[modules.billing]\nisolation = \"process\"\nworker_open_files = 64\nplan = \"pro\"\n",
        )
        .unwrap();
        let cfg = HostConfig::load(Some(&path), &|_| None).unwrap();
        let own = &cfg.isolation.modules["billing"];
        assert_eq!(
            own.isolation,
            Some(crate::module::manifest::Isolation::Process)
        );
        let limits = cfg.isolation.limits_of("billing");
        assert_eq!(limits.open_files, 64);
        assert_eq!(limits.memory_bytes, None);
        assert_eq!(cfg.isolation.limits_of("other").open_files, 1024);
        let merged = cfg.module_config("billing", &serde_json::Map::new());
        assert_eq!(merged, serde_json::json!({"plan": "pro"}));

        std::fs::write(&path, "[modules.billing]\nisolation = \"sandbox\"\n").unwrap();
        let err = HostConfig::load(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("modules.billing.isolation"), "{err}");
        assert!(err.contains("expected in-process or process"), "{err}");
    }

    #[test]
    fn unknown_file_key_suggests_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modhost.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = HostConfig::load(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1, column 1"), "{err}");
        assert!(err.contains("did you mean `listen`?"), "{err}");
    }

    /// README's configuration block names every setting, and nothing else.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\nlisten =")
            .expect("README has the configuration block");
        let block = &readme[start + 8..];
        let block = &block[..block.find("```").expect("the block ends")];
        let documented: Vec<&str> = block
            .lines()
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
            .collect();
        let names: Vec<&str> = SETTINGS.iter().map(|(name, _)| *name).collect();
        for name in &names {
            assert!(
                documented.contains(name),
                "README does not document `{name}`"
            );
        }
        for name in &documented {
            assert!(
                names.contains(name),
                "README documents `{name}`, which is no setting"
            );
        }
        for name in &names {
            let env = format!("MODHOST_{}", name.to_uppercase());
            assert!(block.contains(&env), "README does not name {env}");
        }
    }

    #[test]
    fn a_file_value_of_the_wrong_kind_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modhost.toml");
        std::fs::write(&path, "# comment\n  strict = \"maybe\"\n").unwrap();
        let err = HostConfig::load(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 3"), "{err}");
        assert!(err.contains("`strict`"), "{err}");
        std::fs::write(&path, "trusted_keys = [\"nothex\"]\n").unwrap();
        let err = HostConfig::load(Some(&path), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a public key"), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = |k: &str| (k == "MODHOST_STRICT").then(|| "maybe".to_string());
        let err = HostConfig::load(None, &env).unwrap_err().to_string();
        assert!(err.contains("MODHOST_STRICT"), "{err}");
        assert!(err.contains("expected true or false"), "{err}");
    }
}
