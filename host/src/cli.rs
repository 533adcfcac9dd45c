//! The command line: `modhost run | check | list | graph`, and the one top-level error
//! report.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, HostConfig, LogFormat};
use crate::http::server;
use crate::logging;
use crate::module::inspect::Inspection;
use crate::module::loader::RuntimeDir;
use crate::runtime::lifecycle::{BootError, Host};

/// modhost: a host for modules shipped as native shared libraries.
#[derive(Debug, Parser)]
#[command(name = "modhost", version, about, long_about = None)]
pub struct Cli {
    /// Log format (also MODHOST_LOG_FORMAT); filter with RUST_LOG, e.g. RUST_LOG=debug.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the modules and serve HTTP until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate manifests, signatures, libraries (ABI) and the dependency graph under the
    /// same trust policy as `run`; exit 1 on any problem.
    Check(CheckArgs),
    /// Print the modules, their versions and the load order.
    List(DirArgs),
    /// Print the dependency graph (an edge a -> b means a depends on b).
    Graph(GraphArgs),
    /// Operator tasks on the host's data: create users, mint tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Vendors: create an ed25519 key pair for signing modules.
    Keygen(KeygenArgs),
    /// Vendors: sign a module folder (its module.yaml and library); writes module.sig.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write vendor.key (secret, mode 0600) and vendor.pub.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The module folder to sign.
    #[arg(value_name = "MODULE_DIR")]
    dir: PathBuf,
    /// The secret key file from `modhost keygen`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user (e.g. the first admin). Without --password-stdin a random password
    /// is generated and printed once.
    CreateUser(CreateUserArgs),
    /// Print a short-lived token holding every permission, for the operator at the
    /// console. Whoever can read the host's data can do this.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct DataArgs {
    /// Where the host keeps its data (also MODHOST_DATA_DIR) [default: data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The host's database (also MODHOST_DATABASE_URL) [default: SQLite in DATA_DIR/db]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A TOML config file (also MODHOST_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CreateUserArgs {
    /// The user's email (their login).
    email: String,
    /// Roles to give the user; repeat for several (the built-in `admin` holds every permission).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Read the password from standard input (one line).
    #[arg(long)]
    password_stdin: bool,
    /// A display name.
    #[arg(long, value_name = "NAME", default_value = "")]
    display_name: String,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// How long the token is valid, e.g. 30m, 1h.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    ttl: String,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The modules directory (also MODHOST_MODULES_DIR) [default: modules]
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Address to listen on (also MODHOST_LISTEN) [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where the host keeps its data and runtime copies of libraries (also MODHOST_DATA_DIR) [default: data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database: postgres://USER@HOST:PORT/DB (also MODHOST_DATABASE_URL) [default: SQLite files in DATA_DIR/db]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A TOML config file (also MODHOST_CONFIG); see the README for its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Exit with an error if any module fails (also MODHOST_STRICT=true).
    #[arg(long)]
    strict: bool,
    /// Apply changes to module folders live: drop-in, replace, remove (also
    /// MODHOST_WATCH) [default: on in debug builds, off in release builds]
    #[arg(long, overrides_with = "no_watch")]
    watch: bool,
    /// Do not watch the modules directory.
    #[arg(long)]
    no_watch: bool,
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The modules directory.
    #[arg(default_value = "modules", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The modules directory.
    #[arg(default_value = "modules", value_name = "DIR")]
    dir: PathBuf,
    /// A TOML config file (also MODHOST_CONFIG): its trusted_keys and require_signatures
    /// apply, as do MODHOST_TRUSTED_KEYS and MODHOST_REQUIRE_SIGNATURES.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Trust this vendor public key (hex) in addition to the configured ones; repeat for
    /// several.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    /// Refuse unsigned modules, whatever the configuration says.
    #[arg(long)]
    require_signatures: bool,
}

#[derive(Debug, Args)]
struct GraphArgs {
    /// The modules directory.
    #[arg(default_value = "modules", value_name = "DIR")]
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    format: GraphFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Everything that can end a command with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Discovery(#[from] crate::module::discovery::DiscoveryError),
    #[error("cannot listen on {addr}: {source}; is another process using it? pass --listen ADDR")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0} problem(s) found")]
    CheckFailed(usize),
    #[error("cannot create a scratch directory for loading libraries: {0}")]
    Scratch(std::io::Error),
    #[error(transparent)]
    Database(#[from] crate::data::database::DbSetupError),
    #[error(transparent)]
    CoreSetup(#[from] crate::core::CoreSetupError),
    #[error("{0}")]
    Core(#[from] crate::core::CoreError),
    #[error("{0}")]
    Usage(String),
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |k: &str| std::env::var(k).ok();
    let format = cli
        .log_format
        .or_else(|| match env("MODHOST_LOG_FORMAT").as_deref() {
            Some("json") => Some(LogFormat::Json),
            _ => None,
        })
        .unwrap_or(LogFormat::Text);
    let target = match cli.command {
        Command::Run(_) => logging::LogTarget::Stdout,
        _ => logging::LogTarget::Stderr,
    };
    logging::init(format, target);
    match run_command(cli.command, &env) {
        Ok(()) => ExitCode::SUCCESS,
        // `check` has already listed the problems.
        Err(CliError::CheckFailed(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("modhost: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    match command {
        Command::Run(args) => run(args, env),
        Command::Check(args) => check(args, env),
        Command::List(args) => {
            print!("{}", Inspection::of(&args.dir)?.table());
            Ok(())
        }
        Command::Admin(cmd) => admin(cmd, env),
        Command::Keygen(args) => keygen(&args.out),
        Command::Sign(args) => sign(&args.dir, &args.key),
        Command::Graph(args) => {
            let inspection = Inspection::of(&args.dir)?;
            match args.format {
                GraphFormat::Dot => print!("{}", inspection.dot()),
                GraphFormat::Mermaid => print!("{}", inspection.mermaid()),
            }
            Ok(())
        }
    }
}

fn run(args: RunArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    let file = args
        .config
        .clone()
        .or_else(|| env("MODHOST_CONFIG").map(PathBuf::from));
    let mut config = HostConfig::load(file.as_deref(), env)?;
    if let Some(dir) = args.modules {
        config.modules_dir = dir;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = &args.listen {
        config.set("listen", addr, "--listen")?;
    }
    if let Some(url) = &args.database_url {
        config.set("database_url", url, "--database-url")?;
    }
    if args.strict {
        config.strict = true;
    }
    if args.watch {
        config.watch = true;
    }
    if args.no_watch {
        config.watch = false;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
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
            .map_err(|source| CliError::Listen { addr, source })?;
        let host = Host::boot(config).await?;
        let local = listener.local_addr().unwrap_or(addr);
        let report = host.report();
        let running = report.iter().filter(|m| m.state == "started").count();
        tracing::info!(%local, running, failed = report.len() - running, "modhost ready on http://{local}");
        if host.config.watch {
            tracing::info!(interval = ?host.config.watch_interval, "watching the modules directory for changes");
            crate::runtime::watch::spawn(host.clone(), host.config.watch_interval);
        }
        server::serve(host, listener, server::shutdown_signal())
            .await
            .map_err(|source| CliError::Listen { addr, source })
    })
}

fn admin(cmd: AdminCommand, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    let data = match &cmd {
        AdminCommand::CreateUser(a) => &a.data,
        AdminCommand::Token(a) => &a.data,
    };
    let file = data
        .config
        .clone()
        .or_else(|| env("MODHOST_CONFIG").map(PathBuf::from));
    let mut config = HostConfig::load(file.as_deref(), env)?;
    if let Some(dir) = &data.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &data.database_url {
        config.set("database_url", url, "--database-url")?;
    }
    let password = match &cmd {
        AdminCommand::CreateUser(a) if a.password_stdin => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                CliError::Usage(format!("cannot read the password from stdin: {e}"))
            })?;
            Some(line.trim_end_matches(['\r', '\n']).to_string())
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async move {
        let databases = crate::data::database::Databases::connect(&config.database()).await?;
        let core = crate::core::Core::open(databases.core(), config.auth.clone()).await?;
        match cmd {
            AdminCommand::CreateUser(a) => {
                let generated = password.is_none();
                let password = password.unwrap_or_else(|| crate::random::random_hex(10));
                let user = core
                    .create_user("console", &a.email, &password, &a.display_name)
                    .await?;
                for role in &a.roles {
                    core.assign_role("console", &user.id, role).await?;
                }
                println!(
                    "created user {} ({}) with roles [{}]",
                    user.email,
                    user.id,
                    a.roles.join(", ")
                );
                if generated {
                    println!("password: {password}");
                }
                Ok(())
            }
            AdminCommand::Token(a) => {
                let ttl = crate::config::parse_duration(&a.ttl)
                    .map_err(|e| CliError::Usage(format!("--ttl {}: {e}", a.ttl)))?;
                println!("{}", core.console_token(ttl));
                Ok(())
            }
        }
    })
}

fn keygen(out: &Path) -> Result<(), CliError> {
    let (secret, public) = crate::module::signing::keygen();
    let io =
        |e: std::io::Error| CliError::Usage(format!("cannot write keys to {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(io)?;
    let secret_path = out.join("vendor.key");
    write_secret(&secret_path, &format!("{secret}\n")).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CliError::Usage(format!(
            "{} exists; refusing to overwrite a key (move it away or pick another --out)",
            secret_path.display()
        )),
        _ => io(e),
    })?;
    std::fs::write(out.join("vendor.pub"), format!("{public}\n")).map_err(io)?;
    println!("secret key: {} (keep it private)", secret_path.display());
    println!("public key: {public}");
    println!("operators add the public key to trusted_keys in their modhost config");
    Ok(())
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

fn sign(dir: &Path, key: &Path) -> Result<(), CliError> {
    let found = crate::module::discovery::discover_one(dir)
        .map_err(|(_, e)| CliError::Usage(e.to_string()))?
        .ok_or_else(|| CliError::Usage(format!("{} has no module.yaml", dir.display())))?;
    let public = crate::module::signing::sign(dir, &found.manifest_path, &found.library, key)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!(
        "signed {} ({} and {}) with key {public}",
        found.manifest.name,
        found.manifest_path.display(),
        found.library.display()
    );
    Ok(())
}

fn check(args: CheckArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    let file = args
        .config
        .clone()
        .or_else(|| env("MODHOST_CONFIG").map(PathBuf::from));
    let config = HostConfig::load(file.as_deref(), env)?;
    let mut policy = config.trust_policy();
    policy.trusted_keys.extend(args.trusted_keys);
    policy.require_signatures |= args.require_signatures;
    let dir = args.dir.as_path();
    let inspection = Inspection::of(dir)?;
    let scratch = std::env::temp_dir().join(format!("modhost-check-{}", std::process::id()));
    let runtime = RuntimeDir::create(&scratch).map_err(CliError::Scratch)?;
    let problems = inspection.problems(Some((&runtime, &policy)));
    runtime.remove();
    let _ = std::fs::remove_dir_all(&scratch);
    let modules = inspection.discovery.modules.len() + inspection.discovery.problems.len();
    for p in &problems {
        println!("error: {p}");
    }
    if problems.is_empty() {
        println!("ok: {modules} module(s) in {}, no problems", dir.display());
        Ok(())
    } else {
        println!(
            "{} problem(s) in {modules} module(s) in {}",
            problems.len(),
            dir.display()
        );
        Err(CliError::CheckFailed(problems.len()))
    }
}
