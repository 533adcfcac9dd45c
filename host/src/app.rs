//! What each `modhost` command does, as library calls. The binary (`main.rs` and its
//! `cli.rs`) parses the command line, builds a [`HostConfig`], calls one of these and
//! prints the result; everything else happens here.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use modhost_plugin_api::UserInfo;

use crate::config::{ConfigError, HostConfig};
use crate::core::{Core, CoreError, CoreSetupError};
use crate::data::database::{Databases, DbSetupError};
use crate::http::server;
use crate::module::discovery::{discover_one, DiscoveryError};
use crate::module::inspect::Inspection;
use crate::module::loader::{private_scratch_dir, RuntimeDir};
use crate::module::signing::{self, TrustPolicy};
use crate::runtime::lifecycle::{BootError, Host};

/// Everything that can end a command with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot listen on {addr}: {source}; is another process using it? pass --listen ADDR")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create a scratch directory for loading libraries: {0}")]
    Scratch(std::io::Error),
    #[error(transparent)]
    Database(#[from] DbSetupError),
    #[error(transparent)]
    CoreSetup(#[from] CoreSetupError),
    #[error("{0}")]
    Core(#[from] CoreError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Worker(#[from] crate::isolation::worker::WorkerError),
}

/// Loads the modules and serves HTTP until SIGINT or SIGTERM (`modhost run`).
pub fn run(config: HostConfig) -> Result<(), AppError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        let addr = config.listen;
        tracing::info!(
            modules = %config.modules_dir.display(),
            data = %config.data_dir.display(),
            "modhost {} starting (plugin-api {})",
            env!("CARGO_PKG_VERSION"),
            modhost_plugin_api::PLUGIN_API_VERSION
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Listen { addr, source })?;
        let host = Host::boot(config).await?;
        let local = listener.local_addr().unwrap_or(addr);
        let report = host.report();
        let running = report.iter().filter(|m| m.state == "started").count();
        tracing::info!(%local, running, failed = report.len() - running, "modhost ready on http://{local}");
        if host.config.watch {
            tracing::info!(mode = ?host.config.watch_mode, settle = ?host.config.watch_settle, interval = ?host.config.watch_interval, "watching the modules directory for changes");
            crate::runtime::watch::spawn(host.clone());
        }
        server::serve(host, listener, server::shutdown_signal())
            .await
            .map_err(|source| AppError::Listen { addr, source })
    })
}

/// Where `modhost core` listens.
#[derive(Debug, Clone)]
pub struct CoreListeners {
    pub auth: std::net::SocketAddr,
    pub identity: std::net::SocketAddr,
    pub authz: std::net::SocketAddr,
    pub audit: std::net::SocketAddr,
    /// All four services on this one address instead.
    pub all: Option<std::net::SocketAddr>,
    /// TLS: the certificate and key files (PEM), and the CA of the client certificates
    /// to require (mutual TLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for CoreListeners {
    /// The platform's ports: Auth 8081, Identity 8082, Authz 8083, Audit 8084.
    fn default() -> Self {
        let local = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            auth: local(8081),
            identity: local(8082),
            authz: local(8083),
            audit: local(8084),
            all: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// Serves the core services over gRPC until SIGINT or SIGTERM (`modhost core`), on the
/// host's core data (`database_url`, else SQLite in the data dir).
pub fn core(config: HostConfig, listeners: CoreListeners) -> Result<(), AppError> {
    use crate::core::grpc_server::{self as core_server, CoreServices, Served};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        tracing::info!(
            data = %config.data_dir.display(),
            "modhost {} core services starting",
            env!("CARGO_PKG_VERSION")
        );
        let databases = Databases::connect(&config.database()).await?;
        let core = Core::open(databases.core(), config.auth.clone()).await?;
        let list = match listeners.all {
            Some(addr) => vec![(Served::All, addr)],
            None => vec![
                (Served::Auth, listeners.auth),
                (Served::Identity, listeners.identity),
                (Served::Authz, listeners.authz),
                (Served::Audit, listeners.audit),
            ],
        };
        let tls = server_tls(&listeners)?;
        let core = std::sync::Arc::new(core);
        // Picks up a key rotation made by `modhost core rotate-key` (another process).
        let watched = core.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(local) = watched.local() {
                    if let Err(e) = local.reload_keys().await {
                        tracing::warn!(error = %e, "cannot read the token signing keys again");
                    }
                }
            }
        });
        let services = CoreServices::new(core);
        core_server::serve(services, list, tls, server::shutdown_signal())
            .await
            .map_err(|e| AppError::Usage(e.to_string()))?;
        tracing::info!("core services stopped");
        Ok(())
    })
}

/// Makes a new token signing key in the core's data (`modhost core rotate-key`); the
/// old key keeps checking tokens until they have expired. A running `modhost core`
/// picks the new key up within seconds.
pub fn rotate_key(config: &HostConfig) -> Result<crate::core::tokens::PublicKey, AppError> {
    with_core(config, |core| async move {
        let local = core
            .local()
            .ok_or_else(|| AppError::Usage("rotate-key works on the core's own data".into()))?;
        Ok(local.rotate_key().await?)
    })
}

/// The TLS files of `modhost core`, read.
fn server_tls(
    listeners: &CoreListeners,
) -> Result<Option<crate::core::grpc_server::ServerTls>, AppError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| AppError::Usage(format!("--{flag} {}: {e}", path.display())))
    };
    match (&listeners.tls_cert, &listeners.tls_key) {
        (None, None) if listeners.tls_client_ca.is_some() => Err(AppError::Usage(
            "--tls-client-ca needs --tls-cert and --tls-key".into(),
        )),
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(crate::core::grpc_server::ServerTls {
            cert: read("tls-cert", cert)?,
            key: read("tls-key", key)?,
            client_ca: listeners
                .tls_client_ca
                .as_deref()
                .map(|ca| read("tls-client-ca", ca))
                .transpose()?,
        })),
        _ => Err(AppError::Usage(
            "--tls-cert and --tls-key go together".into(),
        )),
    }
}

/// What `modhost check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// Module folders seen (valid or not).
    pub modules: usize,
    /// One line per problem.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not problems (who signed a module, the dependencies
    /// of a single module checked alone).
    pub notes: Vec<String>,
}

/// Checks a modules directory: manifests, the dependency graph, and each library's
/// signature and integrity under `policy`, then its ABI (`modhost check`). A library is
/// loaded only once it passed the checks, and no module entry point is called; loading
/// does run the library's ELF constructors, as for any shared library, so under a
/// policy that accepts unsigned modules an unsigned library's constructors run.
///
/// `dir` is a modules directory, or one module's folder (it holds a `module.yaml`): then
/// that module is checked alone, and its dependencies are listed as notes, since they
/// are not there to check. A directory with no module at all is a problem: a check
/// that looked at nothing must not pass.
pub fn check(dir: &Path, policy: &TrustPolicy) -> Result<CheckReport, AppError> {
    let single = is_module_folder(dir);
    let inspection = if single {
        Inspection::of_module(dir)
    } else {
        Inspection::of(dir)?
    };
    let scratch = private_scratch_dir().map_err(AppError::Scratch)?;
    let runtime = RuntimeDir::create(&scratch).map_err(AppError::Scratch)?;
    let found = inspection.check(&runtime, policy, single);
    runtime.remove();
    let _ = std::fs::remove_dir_all(&scratch);
    let modules = inspection.discovery.modules.len() + inspection.discovery.problems.len();
    let mut problems = found.problems;
    if modules == 0 {
        problems.push(format!(
            "no module in {}: it holds no folder with a module.yaml (to check one module, pass its folder)",
            dir.display()
        ));
    }
    Ok(CheckReport {
        modules,
        problems,
        notes: found.notes,
    })
}

/// Whether `dir` is one module's folder rather than a modules directory.
fn is_module_folder(dir: &Path) -> bool {
    [
        "module.yaml",
        "module.yml",
        "Module.yaml",
        "module.yaml.txt",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// Packages a module crate (`modhost package`).
pub fn package(
    options: &crate::package::create::PackageOptions,
) -> Result<crate::package::create::Package, AppError> {
    crate::package::create::package(options).map_err(|e| AppError::Usage(e.to_string()))
}

/// Installs a package into a modules directory (`modhost install`).
pub fn install(
    options: &crate::package::install::InstallOptions,
) -> Result<crate::package::install::Installed, AppError> {
    crate::package::install::install(options).map_err(|e| AppError::Usage(e.to_string()))
}

/// The embedded core services on `config`'s data, for tools and benchmarks (`modhost
/// run` and `modhost core` open them themselves).
pub async fn open_core(config: &HostConfig) -> Result<std::sync::Arc<Core>, AppError> {
    let databases = Databases::connect(&config.database()).await?;
    Ok(std::sync::Arc::new(
        Core::open(databases.core(), config.auth.clone()).await?,
    ))
}

/// A user made by [`create_user`].
#[derive(Debug)]
pub struct CreatedUser {
    pub user: UserInfo,
    /// The password, when it was generated rather than given.
    pub generated_password: Option<String>,
}

/// Creates a user with `roles` in the host's data (`modhost admin create-user`).
/// Without `password`, a random one is generated and returned.
pub fn create_user(
    config: &HostConfig,
    email: &str,
    roles: &[String],
    password: Option<String>,
    display_name: &str,
) -> Result<CreatedUser, AppError> {
    with_core(config, |core| async move {
        let generated_password = password.is_none().then(|| crate::random::random_hex(10));
        let password = password.or_else(|| generated_password.clone());
        let password = password.unwrap_or_default();
        let user = core
            .create_user("console", email, &password, display_name)
            .await?;
        for role in roles {
            core.assign_role("console", &user.id, role).await?;
        }
        Ok(CreatedUser {
            user,
            generated_password,
        })
    })
}

/// A token holding every permission, valid for `ttl` (`modhost admin token`).
pub fn console_token(config: &HostConfig, ttl: Duration) -> Result<String, AppError> {
    with_core(config, |core| async move { Ok(core.console_token(ttl)?) })
}

/// Opens the host's core area on a small runtime of its own and runs `work` on it.
fn with_core<T, F, Fut>(config: &HostConfig, work: F) -> Result<T, AppError>
where
    F: FnOnce(std::sync::Arc<Core>) -> Fut,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(async move {
        let databases = Databases::connect(&config.database()).await?;
        let core = Core::open(databases.core(), config.auth.clone()).await?;
        work(std::sync::Arc::new(core)).await
    })
}

/// The files [`keygen`] wrote.
#[derive(Debug)]
pub struct KeyFiles {
    /// The secret key file (mode 0600).
    pub secret: PathBuf,
    /// The public key, hex (also written to `vendor.pub`).
    pub public_key: String,
}

/// Creates a vendor key pair in `out`: `vendor.key` (secret, readable by its owner only
/// from its first byte, never over an existing file) and `vendor.pub`.
pub fn keygen(out: &Path) -> Result<KeyFiles, AppError> {
    let (secret, public_key) = signing::keygen();
    let io =
        |e: std::io::Error| AppError::Usage(format!("cannot write keys to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(io)?;
    let secret_path = out.join("vendor.key");
    write_secret(&secret_path, &format!("{secret}\n")).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => AppError::Usage(format!(
            "{} exists; refusing to overwrite a key (move it away or pick another --out)",
            secret_path.display()
        )),
        _ => io(e),
    })?;
    std::fs::write(out.join("vendor.pub"), format!("{public_key}\n")).map_err(io)?;
    Ok(KeyFiles {
        secret: secret_path,
        public_key,
    })
}

/// Creates `path` holding `text`, readable by its owner only from the first byte, and
/// never over an existing file.
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// A module signed by [`sign`].
#[derive(Debug)]
pub struct Signed {
    pub module: String,
    /// How many files the signature covers.
    pub files: usize,
    pub public_key: String,
}

/// Signs the module folder `dir` with the secret key in `key` (writes `module.sig`).
pub fn sign(dir: &Path, key: &Path) -> Result<Signed, AppError> {
    let found = discover_one(dir)
        .map_err(|(_, e)| AppError::Usage(e.to_string()))?
        .ok_or_else(|| AppError::Usage(format!("{} has no module.yaml", dir.display())))?;
    let public_key = signing::sign(dir, key).map_err(|e| AppError::Usage(e.to_string()))?;
    let files = signing::folder_files(dir)
        .map(|f| f.len())
        .map_err(|e| AppError::Usage(e.to_string()))?;
    Ok(Signed {
        module: found.manifest.name.to_string(),
        files,
        public_key,
    })
}
