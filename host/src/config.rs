//! Host configuration: defaults, an optional TOML file, then `MODHOST_*` environment
//! variables; command-line flags are applied on top by `cli.rs`.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! modules_dir = "modules"
//! data_dir = "data"
//! strict = false
//! log_format = "text"          # or "json"
//! shutdown_timeout = "30s"     # drain deadline on SIGINT/SIGTERM
//! init_timeout = "30s"         # per module init/start/stop
//! request_timeout = "30s"      # per request; 504 after it
//! header_read_timeout = "10s"
//! max_body_bytes = 1048576     # 413 above it
//! max_response_bytes = 16777216 # a bigger module response becomes a 500
//! trusted_keys = ["<vendor public key hex>"]  # from `modhost keygen`
//! require_signatures = false    # true: refuse modules without a trusted module.sig
//! database_url = "postgres://postgres@127.0.0.1:5432/app"  # default: SQLite files in data_dir
//! database_connect_timeout = "30s"   # keep retrying an unreachable database this long
//! database_max_connections = 5       # per module
//! postgres_role_prefix = "modhost_"  # each module's role is <prefix><module>
//! auth_signing_key = "<64+ hex chars>"  # default: generated once, kept in the core area
//! auth_token_ttl = "15m"             # access tokens
//! auth_refresh_ttl = "7d"            # refresh tokens
//! event_queue_capacity = 1024        # per subscription; beyond it events are dead-lettered
//! event_max_retries = 3              # then the event is dead-lettered
//! event_retry_backoff = "100ms"      # doubles per retry
//! event_handler_timeout = "30s"
//! cache_max_bytes = 67108864         # embedded cache bound
//! cache_default_ttl = "5m"
//! watch = false                      # apply module folder changes live (default: on in
//!                                    # debug builds, off in release builds)
//! watch_interval = "250ms"
//!
//! [modules.hello]              # merged over the `config:` of hello's module.yaml
//! greeting = "Howdy"
//! ```

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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
    pub events: crate::events::BusSettings,
    /// Upper bound of the cache's memory, keys and values.
    pub cache_max_bytes: u64,
    pub cache_default_ttl: Duration,
    /// Watch the modules directory and apply changes live.
    pub watch: bool,
    pub watch_interval: Duration,
    /// Per-module config overrides, merged over each manifest's `config:`.
    pub module_overrides: BTreeMap<String, serde_json::Value>,
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
            events: crate::events::BusSettings::default(),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_default_ttl: Duration::from_secs(300),
            // On in development builds, off in release builds.
            watch: cfg!(debug_assertions),
            watch_interval: Duration::from_millis(250),
            module_overrides: BTreeMap::new(),
        }
    }
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    modules_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    strict: Option<bool>,
    log_format: Option<LogFormat>,
    shutdown_timeout: Option<String>,
    init_timeout: Option<String>,
    request_timeout: Option<String>,
    header_read_timeout: Option<String>,
    max_body_bytes: Option<u64>,
    max_response_bytes: Option<u64>,
    trusted_keys: Option<Vec<String>>,
    require_signatures: Option<bool>,
    database_url: Option<String>,
    database_connect_timeout: Option<String>,
    database_max_connections: Option<u32>,
    postgres_role_prefix: Option<String>,
    auth_signing_key: Option<String>,
    auth_token_ttl: Option<String>,
    auth_refresh_ttl: Option<String>,
    event_queue_capacity: Option<usize>,
    event_max_retries: Option<u32>,
    event_retry_backoff: Option<String>,
    event_handler_timeout: Option<String>,
    cache_max_bytes: Option<u64>,
    cache_default_ttl: Option<String>,
    watch: Option<bool>,
    watch_interval: Option<String>,
    #[serde(default)]
    modules: BTreeMap<String, toml::Table>,
}

const FILE_FIELDS: &[&str] = &[
    "listen",
    "modules_dir",
    "data_dir",
    "strict",
    "log_format",
    "shutdown_timeout",
    "init_timeout",
    "request_timeout",
    "header_read_timeout",
    "max_body_bytes",
    "max_response_bytes",
    "trusted_keys",
    "require_signatures",
    "database_url",
    "database_connect_timeout",
    "database_max_connections",
    "postgres_role_prefix",
    "auth_signing_key",
    "auth_token_ttl",
    "auth_refresh_ttl",
    "event_queue_capacity",
    "event_max_retries",
    "event_retry_backoff",
    "event_handler_timeout",
    "cache_max_bytes",
    "cache_default_ttl",
    "watch",
    "watch_interval",
    "modules",
];

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
            let parsed: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: describe_toml_error(&e, &text),
            })?;
            cfg.apply_file(parsed, &path.display().to_string())?;
        }
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    fn apply_file(&mut self, f: FileConfig, origin: &str) -> Result<(), ConfigError> {
        let set = |field: &str, value: Option<String>| -> Option<(String, String)> {
            value.map(|v| (field.to_string(), v))
        };
        for (field, value) in [
            set("listen", f.listen),
            set("shutdown_timeout", f.shutdown_timeout),
            set("init_timeout", f.init_timeout),
            set("request_timeout", f.request_timeout),
            set("header_read_timeout", f.header_read_timeout),
            set("database_url", f.database_url),
            set(
                "max_response_bytes",
                f.max_response_bytes.map(|n| n.to_string()),
            ),
            set("trusted_keys", f.trusted_keys.map(|k| k.join(","))),
            set(
                "require_signatures",
                f.require_signatures.map(|b| b.to_string()),
            ),
            set("database_connect_timeout", f.database_connect_timeout),
            set(
                "database_max_connections",
                f.database_max_connections.map(|n| n.to_string()),
            ),
            set("postgres_role_prefix", f.postgres_role_prefix),
            set("auth_signing_key", f.auth_signing_key),
            set("auth_token_ttl", f.auth_token_ttl),
            set("auth_refresh_ttl", f.auth_refresh_ttl),
            set(
                "event_queue_capacity",
                f.event_queue_capacity.map(|n| n.to_string()),
            ),
            set(
                "event_max_retries",
                f.event_max_retries.map(|n| n.to_string()),
            ),
            set("event_retry_backoff", f.event_retry_backoff),
            set("event_handler_timeout", f.event_handler_timeout),
            set("cache_max_bytes", f.cache_max_bytes.map(|n| n.to_string())),
            set("cache_default_ttl", f.cache_default_ttl),
            set("watch", f.watch.map(|w| w.to_string())),
            set("watch_interval", f.watch_interval),
        ]
        .into_iter()
        .flatten()
        {
            self.set(&field, &value, origin)?;
        }
        if let Some(v) = f.modules_dir {
            self.modules_dir = v;
        }
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.strict {
            self.strict = v;
        }
        if let Some(v) = f.log_format {
            self.log_format = v;
        }
        if let Some(v) = f.max_body_bytes {
            self.max_body_bytes = v;
        }
        for (module, table) in f.modules {
            let value = serde_json::to_value(&table).map_err(|e| ConfigError::Value {
                origin: origin.to_string(),
                field: format!("modules.{module}"),
                value: String::new(),
                why: e.to_string(),
            })?;
            self.module_overrides.insert(module, value);
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        // Every setting of the file except the per-module tables has a variable.
        for field in FILE_FIELDS.iter().copied().filter(|f| *f != "modules") {
            let var = format!("MODHOST_{}", field.to_uppercase());
            if let Some(value) = env(&var) {
                self.set(field, &value, &format!("environment variable {var}"))?;
            }
        }
        Ok(())
    }

    /// Sets one field from text (env var or flag), naming `origin` in errors.
    pub fn set(&mut self, field: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let shown = if field == "auth_signing_key" {
            "<hidden>"
        } else {
            value
        };
        let bad = |why: String| ConfigError::Value {
            origin: origin.to_string(),
            field: field.to_string(),
            value: shown.to_string(),
            why,
        };
        match field {
            "listen" => {
                self.listen = value
                    .parse()
                    .map_err(|_| bad("expected an address such as 127.0.0.1:8080".into()))?
            }
            "modules_dir" => self.modules_dir = PathBuf::from(value),
            "data_dir" => self.data_dir = PathBuf::from(value),
            "strict" => self.strict = parse_bool(value).map_err(bad)?,
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(bad("expected text or json".into())),
                }
            }
            "shutdown_timeout" => self.shutdown_timeout = parse_duration(value).map_err(bad)?,
            "init_timeout" => self.init_timeout = parse_duration(value).map_err(bad)?,
            "request_timeout" => self.request_timeout = parse_duration(value).map_err(bad)?,
            "header_read_timeout" => {
                self.header_read_timeout = parse_duration(value).map_err(bad)?
            }
            "max_body_bytes" => {
                self.max_body_bytes = value
                    .parse()
                    .map_err(|_| bad("expected a number of bytes".into()))?
            }
            "trusted_keys" => {
                let keys: Vec<String> = value
                    .split(',')
                    .map(|k| k.trim().to_lowercase())
                    .filter(|k| !k.is_empty())
                    .collect();
                if let Some(bad_key) = keys
                    .iter()
                    .find(|k| k.len() != 64 || !k.chars().all(|c| c.is_ascii_hexdigit()))
                {
                    return Err(bad(format!(
                        "`{bad_key}` is not a public key (64 hex characters from `modhost keygen`)"
                    )));
                }
                self.trusted_keys = keys
            }
            "require_signatures" => self.require_signatures = parse_bool(value).map_err(bad)?,
            "max_response_bytes" => {
                self.max_response_bytes = value
                    .parse()
                    .map_err(|_| bad("expected a number of bytes".into()))?
            }
            "database_url" => {
                self.database_url = match value.trim() {
                    "" => None,
                    url => Some(url.to_string()),
                }
            }
            "database_connect_timeout" => {
                self.database_connect_timeout = parse_duration(value).map_err(bad)?
            }
            "database_max_connections" => {
                self.database_max_connections = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("expected a positive number".into()))?
            }
            "postgres_role_prefix" => {
                let ok = value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok || value.is_empty() {
                    return Err(bad("use a-z, 0-9 and _ only".into()));
                }
                self.postgres_role_prefix = value.to_string()
            }
            "auth_signing_key" => {
                crate::core::tokens::SigningKey::from_hex(value).map_err(bad)?;
                self.auth.signing_key = Some(value.trim().to_string())
            }
            "auth_token_ttl" => self.auth.access_ttl = parse_duration(value).map_err(bad)?,
            "auth_refresh_ttl" => self.auth.refresh_ttl = parse_duration(value).map_err(bad)?,
            "event_queue_capacity" => {
                self.events.queue_capacity = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("expected a positive number".into()))?
            }
            "event_max_retries" => {
                self.events.max_retries =
                    value.parse().map_err(|_| bad("expected a number".into()))?
            }
            "event_retry_backoff" => {
                self.events.retry_backoff = parse_duration(value).map_err(bad)?
            }
            "event_handler_timeout" => {
                self.events.handler_timeout = parse_duration(value).map_err(bad)?
            }
            "cache_max_bytes" => {
                self.cache_max_bytes = value
                    .parse()
                    .map_err(|_| bad("expected a number of bytes".into()))?
            }
            "cache_default_ttl" => self.cache_default_ttl = parse_duration(value).map_err(bad)?,
            "watch" => self.watch = parse_bool(value).map_err(bad)?,
            "watch_interval" => self.watch_interval = parse_duration(value).map_err(bad)?,
            _ => return Err(bad("unknown setting".into())),
        }
        Ok(())
    }

    /// Which vendors' modules this host loads.
    pub fn trust_policy(&self) -> crate::module::signing::TrustPolicy {
        crate::module::signing::TrustPolicy {
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
            if let Some(best) = crate::module::manifest::did_you_mean(field, FILE_FIELDS) {
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

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = |k: &str| (k == "MODHOST_STRICT").then(|| "maybe".to_string());
        let err = HostConfig::load(None, &env).unwrap_err().to_string();
        assert!(err.contains("MODHOST_STRICT"), "{err}");
        assert!(err.contains("expected true or false"), "{err}");
    }
}
