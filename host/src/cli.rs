//! The command line of the `modhost` binary: its arguments (clap), the configuration
//! they build, the one top-level error report and the exit code. What each command does
//! is library code (`modhost::app`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use modhost::app::{self, AppError};
use modhost::config::{HostConfig, LogFormat};
use modhost::logging;
use modhost::module::inspect::Inspection;

/// modhost: a host for modules shipped as native shared libraries.
#[derive(Debug, Parser)]
#[command(name = "modhost", version, about, long_about = None)]
pub struct Cli {
    /// Log format (also MODHOST_LOG_FORMAT); filter with RUST_LOG, e.g. RUST_LOG=debug.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Colour in text logs: auto (only when the log goes to a terminal), always or
    /// never (also MODHOST_COLOR).
    #[arg(long, global = true, value_enum, value_name = "WHEN")]
    color: Option<ColorArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the modules and serve HTTP until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Serve the core services (Auth, Identity, Authz, Audit) over gRPC until
    /// SIGINT/SIGTERM, on the host's core data.
    Core(CoreArgs),
    /// Validate manifests, signatures, libraries (ABI) and the dependency graph under the
    /// same trust policy as `run`, for a modules directory or one module folder; exit 1
    /// on any problem.
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
    /// Vendors: sign every file of a module folder; writes module.sig.
    Sign(SignArgs),
    /// Vendors: release-build a module crate (anywhere), strip it, assemble it with its
    /// module.yaml and migrations, optionally sign it, and write OUT/<name>/ and
    /// OUT/<name>-<version>.tar.gz.
    Package(PackageArgs),
    /// Operators: check a package (folder or .tar.gz) under the trust policy, then move
    /// it into the modules directory in one step (a watching host loads it once).
    Install(InstallArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell, e.g.
    /// `modhost completions bash > /etc/bash_completion.d/modhost`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `modhost man > modhost.1; man ./modhost.1`.
    Man,
    /// Internal: the process an isolated module runs in (`isolation = "process"`). The
    /// host starts it with these arguments and talks to it over its socket; it is not
    /// meant to be run by hand.
    Worker(WorkerCliArgs),
}

#[derive(Debug, Args)]
struct WorkerCliArgs {
    /// The worker's private directory: the host's socket and its own.
    #[arg(long, value_name = "DIR")]
    socket_dir: PathBuf,
    /// The module it runs.
    #[arg(long, value_name = "NAME")]
    module: String,
    /// The runtime copy of the module's library, verified by the host.
    #[arg(long, value_name = "FILE")]
    library: PathBuf,
    /// The module's folder (read-only to the worker).
    #[arg(long, value_name = "DIR")]
    module_dir: PathBuf,
    /// The worker's writable scratch directory.
    #[arg(long, value_name = "DIR")]
    scratch_dir: PathBuf,
    /// The module's SQLite database, which the sandbox lets it read and write.
    #[arg(long, value_name = "FILE")]
    sqlite: Option<PathBuf>,
    /// Do not confine the worker's filesystem access with Landlock.
    #[arg(long)]
    no_landlock: bool,
    /// The largest gRPC message, in bytes, the worker sends or accepts.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    message_limit: usize,
}

#[derive(Debug, Subcommand)]
enum CoreAction {
    /// Make a new token signing key; the old one keeps checking tokens until they have
    /// expired (the refresh token lifetime). A running `modhost core` picks it up within
    /// seconds.
    RotateKey(DataArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct CoreArgs {
    #[command(subcommand)]
    action: Option<CoreAction>,
    /// Address of the Auth service.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    auth_listen: String,
    /// Address of the Identity service.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8082")]
    identity_listen: String,
    /// Address of the Authz service.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8083")]
    authz_listen: String,
    /// Address of the Audit service.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8084")]
    audit_listen: String,
    /// Serve all four services on this one address instead.
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,
    /// TLS: the core's certificate (PEM); hosts then use an https:// core_url.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: require hosts to present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, Args)]
struct PackageArgs {
    /// The module's crate folder (its Cargo.toml and module.yaml).
    #[arg(value_name = "CRATE_DIR")]
    crate_dir: PathBuf,
    /// Where to write the package.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    out: PathBuf,
    /// Sign the package with this secret key (from `modhost keygen`).
    #[arg(long, value_name = "KEY_FILE")]
    sign: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// A module folder, or a .tar.gz from `modhost package`.
    #[arg(value_name = "PACKAGE")]
    package: PathBuf,
    /// The modules directory (also MODHOST_MODULES_DIR) [default: modules]
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Replace a module of the same name that is already installed.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// The trust policy, as `run` applies it, with additions for this command.
#[derive(Debug, Args)]
struct PolicyArgs {
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
    /// A modules directory, or one module's folder (its dependencies are then reported,
    /// not required).
    #[arg(default_value = "modules", value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
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

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |k: &str| std::env::var(k).ok();
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None if env("MODHOST_LOG_FORMAT").as_deref() == Some("json") => LogFormat::Json,
        None => LogFormat::Text,
    };
    let target = match cli.command {
        Command::Run(_) | Command::Core(_) => logging::LogTarget::Stdout,
        _ => logging::LogTarget::Stderr,
    };
    let from_env = match env("MODHOST_COLOR") {
        None => None,
        Some(v) => match ColorArg::from_str(&v, true) {
            Ok(c) => Some(c),
            Err(_) => {
                eprintln!("modhost: error: environment variable MODHOST_COLOR = \"{v}\" is invalid: expected auto, always or never");
                return ExitCode::FAILURE;
            }
        },
    };
    let color = match cli.color.or(from_env) {
        Some(ColorArg::Always) => logging::Color::Always,
        Some(ColorArg::Never) => logging::Color::Never,
        Some(ColorArg::Auto) | None => logging::Color::Auto,
    };
    // A worker writes its log lines in the format the host reads back.
    if !matches!(cli.command, Command::Worker(_)) {
        logging::init(format, target, color);
    }
    match run_command(cli.command, &env) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        // `check` has already listed the problems.
        Ok(Outcome::ProblemsFound) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("modhost: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that did not fail ended.
enum Outcome {
    Done,
    /// `check` found and printed problems: exit 1.
    ProblemsFound,
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn run_command(command: Command, env: Env) -> Result<Outcome, AppError> {
    match command {
        Command::Completions(args) => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "modhost",
                &mut std::io::stdout(),
            );
            Ok(Outcome::Done)
        }
        Command::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| AppError::Usage(format!("cannot write the man page: {e}")))?;
            Ok(Outcome::Done)
        }
        Command::Run(args) => app::run(run_config(args, env)?).map(|()| Outcome::Done),
        Command::Core(CoreArgs {
            action: Some(CoreAction::RotateKey(data)),
            ..
        }) => {
            let key = app::rotate_key(&data_config(&data, env)?)?;
            println!("new token signing key {} (Ed25519, x = {})", key.kid, key.x);
            Ok(Outcome::Done)
        }
        Command::Core(args) => {
            let config = data_config(&args.data, env)?;
            let addr = |flag: &str, value: &str| {
                value.parse::<std::net::SocketAddr>().map_err(|e| {
                    AppError::Usage(format!(
                        "--{flag} {value}: not an address like 127.0.0.1:8081 ({e})"
                    ))
                })
            };
            let listeners = app::CoreListeners {
                auth: addr("auth-listen", &args.auth_listen)?,
                identity: addr("identity-listen", &args.identity_listen)?,
                authz: addr("authz-listen", &args.authz_listen)?,
                audit: addr("audit-listen", &args.audit_listen)?,
                all: args
                    .grpc_listen
                    .as_deref()
                    .map(|v| addr("grpc-listen", v))
                    .transpose()?,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                tls_client_ca: args.tls_client_ca,
            };
            app::core(config, listeners).map(|()| Outcome::Done)
        }
        Command::Check(args) => check(args, env),
        Command::Worker(args) => {
            let args = modhost::isolation::worker::WorkerArgs {
                socket_dir: args.socket_dir,
                module: args.module,
                library: args.library,
                module_dir: args.module_dir,
                scratch_dir: args.scratch_dir,
                sqlite: args.sqlite,
                landlock: !args.no_landlock,
                message_limit: args.message_limit,
            };
            modhost::isolation::worker::run(args)?;
            Ok(Outcome::Done)
        }
        Command::List(args) => {
            print!("{}", Inspection::of(&args.dir)?.table());
            Ok(Outcome::Done)
        }
        Command::Graph(args) => {
            let inspection = Inspection::of(&args.dir)?;
            match args.format {
                GraphFormat::Dot => print!("{}", inspection.dot()),
                GraphFormat::Mermaid => print!("{}", inspection.mermaid()),
            }
            Ok(Outcome::Done)
        }
        Command::Admin(cmd) => admin(cmd, env).map(|()| Outcome::Done),
        Command::Keygen(args) => {
            let keys = app::keygen(&args.out)?;
            println!("secret key: {} (keep it private)", keys.secret.display());
            println!("public key: {}", keys.public_key);
            println!("operators add the public key to trusted_keys in their modhost config");
            Ok(Outcome::Done)
        }
        Command::Sign(args) => {
            let signed = app::sign(&args.dir, &args.key)?;
            println!(
                "signed {} ({} file(s) in {}) with key {}",
                signed.module,
                signed.files,
                args.dir.display(),
                signed.public_key
            );
            Ok(Outcome::Done)
        }
        Command::Package(args) => {
            let options = modhost::package::create::PackageOptions {
                crate_dir: args.crate_dir,
                out_dir: args.out,
                sign_key: args.sign,
                cargo: env("CARGO").unwrap_or_else(|| "cargo".into()),
            };
            let p = app::package(&options)?;
            println!("packaged {} {}", p.name, p.version);
            println!("  folder:  {}", p.folder.display());
            println!("  archive: {}", p.archive.display());
            println!("  files:   {}", p.files.join(", "));
            match &p.signed_by {
                Some(key) => println!("  signed by {key}"),
                None => println!("  unsigned (pass --sign KEY_FILE to sign it)"),
            }
            println!(
                "next: modhost install {} --modules DIR",
                p.archive.display()
            );
            Ok(Outcome::Done)
        }
        Command::Install(args) => {
            let policy = trust_policy(args.policy, env)?;
            let modules_dir = args
                .modules
                .or_else(|| env("MODHOST_MODULES_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("modules"));
            let options = modhost::package::install::InstallOptions {
                package: args.package,
                modules_dir,
                policy,
                replace: args.replace,
            };
            let i = app::install(&options)?;
            let verb = if i.replaced { "replaced" } else { "installed" };
            let signer = i
                .signed_by
                .map_or_else(|| "unsigned".to_string(), |k| format!("signed by {k}"));
            println!(
                "{verb} {} {} in {} ({signer})",
                i.name,
                i.version,
                i.dir.display()
            );
            Ok(Outcome::Done)
        }
    }
}

/// The trust policy of the config file and environment, plus the command's flags.
fn trust_policy(args: PolicyArgs, env: Env) -> Result<modhost::config::TrustPolicy, AppError> {
    let config = load_config(args.config, env)?;
    let mut policy = config.trust_policy();
    policy.trusted_keys.extend(args.trusted_keys);
    policy.require_signatures |= args.require_signatures;
    Ok(policy)
}

/// The config file (flag, else `MODHOST_CONFIG`), then the environment.
fn load_config(file: Option<PathBuf>, env: Env) -> Result<HostConfig, AppError> {
    let file = file.or_else(|| env("MODHOST_CONFIG").map(PathBuf::from));
    Ok(HostConfig::load(file.as_deref(), env)?)
}

/// `modhost run`'s configuration: file, environment, then its flags.
fn run_config(args: RunArgs, env: Env) -> Result<HostConfig, AppError> {
    let mut config = load_config(args.config, env)?;
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
    config.strict |= args.strict;
    if args.watch {
        config.watch = true;
    }
    if args.no_watch {
        config.watch = false;
    }
    Ok(config)
}

/// The configuration of a command that works on the host's data: file, environment,
/// then `--data-dir` and `--database-url`.
fn data_config(data: &DataArgs, env: Env) -> Result<HostConfig, AppError> {
    let mut config = load_config(data.config.clone(), env)?;
    if let Some(dir) = &data.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &data.database_url {
        config.set("database_url", url, "--database-url")?;
    }
    Ok(config)
}

fn admin(cmd: AdminCommand, env: Env) -> Result<(), AppError> {
    let data = match &cmd {
        AdminCommand::CreateUser(a) => &a.data,
        AdminCommand::Token(a) => &a.data,
    };
    let config = data_config(data, env)?;
    match cmd {
        AdminCommand::CreateUser(a) => {
            let password = match a.password_stdin {
                true => Some(read_password()?),
                false => None,
            };
            let created = app::create_user(&config, &a.email, &a.roles, password, &a.display_name)?;
            println!(
                "created user {} ({}) with roles [{}]",
                created.user.email,
                created.user.id,
                a.roles.join(", ")
            );
            if let Some(password) = created.generated_password {
                println!("password: {password}");
            }
            Ok(())
        }
        AdminCommand::Token(a) => {
            let ttl = modhost::config::parse_duration(&a.ttl)
                .map_err(|e| AppError::Usage(format!("--ttl {}: {e}", a.ttl)))?;
            println!("{}", app::console_token(&config, ttl)?);
            Ok(())
        }
    }
}

/// One line from standard input, without its line ending.
fn read_password() -> Result<String, AppError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| AppError::Usage(format!("cannot read the password from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn check(args: CheckArgs, env: Env) -> Result<Outcome, AppError> {
    let policy = trust_policy(args.policy, env)?;
    let report = app::check(&args.dir, &policy)?;
    let (dir, modules) = (args.dir.display(), report.modules);
    for problem in &report.problems {
        println!("error: {problem}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.problems.is_empty() {
        println!("ok: {modules} module(s) in {dir}, no problems");
        return Ok(Outcome::Done);
    }
    let count = report.problems.len();
    println!("{count} problem(s) in {modules} module(s) in {dir}");
    Ok(Outcome::ProblemsFound)
}
