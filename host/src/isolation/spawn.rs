//! Starting a worker process: its private socket directory, the limits applied before
//! it runs (`setrlimit`, death with the host), its log lines, and watching its exit.
//!
//! The worker inherits nothing from the host's environment (the host's may hold
//! database passwords or the signing seed): it gets `TMPDIR` and nothing else. What it
//! needs arrives over its socket.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use abi_stable::std_types::RStr;
use hyper_util::rt::TokioIo;
use modhost_plugin_api::ffi::{level, FfiHostBox};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Endpoint, Server};

use crate::isolation::{
    callbacks::Callbacks, link::WorkerLink, proxies::Deadlines, settings::WorkerLimits, ExitSender,
    WorkerExit,
};
use crate::wire::module_v1::{module_host_server::ModuleHostServer, worker_client::WorkerClient};

/// The socket the worker serves `Worker` on, inside its directory.
pub const WORKER_SOCKET: &str = "worker.sock";
/// The socket the host serves `ModuleHost` on, inside the worker's directory.
pub const HOST_SOCKET: &str = "host.sock";
/// How long a retired worker may take to exit after SIGTERM before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// What the worker prints on stdout once it serves.
pub const READY_LINE: &str = "modhost-worker-ready";

/// How to start one worker.
pub struct Launch<'a> {
    pub module: &'a str,
    /// The program to run (`modhost`), with `worker` as its first argument.
    pub program: &'a Path,
    /// The worker's private directory (sockets); created here, removed at exit.
    pub dir: &'a Path,
    /// Its writable scratch directory (`TMPDIR`).
    pub scratch: &'a Path,
    pub limits: &'a WorkerLimits,
    pub deadlines: Deadlines,
    /// The runtime copy of the library and the module's folder, which the sandbox lets
    /// the worker read.
    pub library: &'a Path,
    pub module_dir: &'a Path,
    /// The module's SQLite database, which the sandbox lets it read and write.
    pub sqlite: Option<&'a Path>,
    /// How long to wait for the worker to serve.
    pub ready_within: Duration,
    pub exits: ExitSender,
}

/// Starts the worker for `launch.module`, serving its callbacks with `host`; returns
/// once the worker serves.
pub async fn start(launch: Launch<'_>, host: FfiHostBox) -> Result<Arc<WorkerLink>, String> {
    let module = launch.module.to_string();
    private_dir(launch.dir).map_err(|e| format!("cannot create {}: {e}", launch.dir.display()))?;
    private_dir(launch.scratch)
        .map_err(|e| format!("cannot create {}: {e}", launch.scratch.display()))?;
    let worker_socket = launch.dir.join(WORKER_SOCKET);
    let channel = Endpoint::from_static("http://worker.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = worker_socket.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }),
    );
    let (kill_tx, kill_rx) = tokio::sync::mpsc::unbounded_channel();
    let link = Arc::new(WorkerLink::new(
        &module,
        WorkerClient::new(channel),
        kill_tx,
    ));

    let listener = tokio::net::UnixListener::bind(launch.dir.join(HOST_SOCKET))
        .map_err(|e| format!("cannot listen on {}: {e}", launch.dir.display()))?;
    let callbacks = Callbacks::new(host.clone(), link.clone(), launch.deadlines);
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let served = Server::builder()
            .add_service(ModuleHostServer::new(callbacks))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = server_stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "a worker's callback server ended with an error");
        }
    });

    let mut child = command(&launch)
        .spawn()
        .map_err(|e| format!("cannot start {} worker: {e}", launch.program.display()))?;
    let pid = child.id().unwrap_or(0);
    link.set_pid(pid);
    let stdout = child.stdout.take();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_logs(stderr, host.clone(), module.clone(), pid));
    }
    let dir = launch.dir.to_path_buf();
    let scratch = launch.scratch.to_path_buf();
    tokio::spawn(supervise(
        child,
        kill_rx,
        link.clone(),
        launch.exits.clone(),
        (dir, scratch),
        server_stop,
    ));

    let ready = async {
        let mut lines = BufReader::new(stdout?).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == READY_LINE {
                return Some(());
            }
        }
        None
    };
    match tokio::time::timeout(launch.ready_within, ready).await {
        Ok(Some(())) => {
            tracing::info!(module = %module, pid, "worker process started");
            Ok(link)
        }
        Ok(None) => Err(format!(
            "its worker process (pid {pid}) exited before it served; the log above says why"
        )),
        Err(_) => {
            link.retire("it did not start in time");
            Err(format!(
                "its worker process (pid {pid}) did not start within {:?}",
                launch.ready_within
            ))
        }
    }
}

/// A directory only this user may enter.
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn command(launch: &Launch<'_>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(launch.program);
    cmd.arg("worker")
        .arg("--socket-dir")
        .arg(launch.dir)
        .arg("--module")
        .arg(launch.module)
        .arg("--library")
        .arg(launch.library)
        .arg("--module-dir")
        .arg(launch.module_dir)
        .arg("--scratch-dir")
        .arg(launch.scratch);
    if let Some(path) = launch.sqlite {
        cmd.arg("--sqlite").arg(path);
    }
    if !launch.limits.landlock {
        cmd.arg("--no-landlock");
    }
    cmd.env_clear()
        .env("TMPDIR", launch.scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (memory, files) = (launch.limits.memory_bytes, launch.limits.open_files);
    // SAFETY: between fork and exec only async-signal-safe system calls run
    // (setrlimit, prctl, getppid, kill); nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || apply_limits(memory, files));
    }
    cmd
}

/// Runs in the child between fork and exec.
fn apply_limits(memory: Option<u64>, open_files: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: a plain system call with a valid pointer to a local.
        match unsafe { libc::setrlimit(resource, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    if let Some(bytes) = memory {
        set(libc::RLIMIT_DATA, bytes)?;
    }
    set(libc::RLIMIT_NOFILE, open_files)?;
    // A crashing vendor library must not fill the disk with core files.
    set(libc::RLIMIT_CORE, 0)?;
    // SAFETY: plain system calls. The worker dies with the host, even when the host is
    // killed; if the host died before this line, the worker ends itself here.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() == 1 {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    Ok(())
}

/// Waits for the worker's exit (or kills it when asked), then reports it.
async fn supervise(
    mut child: tokio::process::Child,
    mut kill: tokio::sync::mpsc::UnboundedReceiver<String>,
    link: Arc<WorkerLink>,
    exits: ExitSender,
    dirs: (PathBuf, PathBuf),
    server_stop: tokio::sync::oneshot::Sender<()>,
) {
    let mut killed_because = None;
    let status = tokio::select! {
        status = child.wait() => status,
        Some(reason) = kill.recv() => {
            killed_because = Some(reason);
            // A retired worker (its module stopped) gets SIGTERM and a moment to exit
            // on its own; a hung one, SIGKILL at once.
            if link.is_retiring() {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: a plain system call on our own child, not yet reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                match tokio::time::timeout(RETIRE_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                }
            } else {
                let _ = child.start_kill();
                child.wait().await
            }
        }
    };
    link.mark_exited();
    let _ = server_stop.send(());
    let how = match status {
        Ok(status) => describe_exit(status),
        Err(e) => format!("could not be waited for: {e}"),
    };
    let reason = match killed_because {
        Some(why) => format!("{why}; {how}"),
        None => how,
    };
    let module = link.module().to_string();
    let _ = std::fs::remove_dir_all(&dirs.0);
    let _ = std::fs::remove_dir_all(&dirs.1);
    if link.is_retiring() {
        tracing::debug!(module = %module, pid = link.pid(), "worker process ended: {reason}");
        return;
    }
    tracing::error!(module = %module, pid = link.pid(), "worker process crashed: {reason}");
    let _ = exits.send(WorkerExit {
        module,
        worker: link.id(),
        reason,
    });
}

/// "killed by signal 11 (SIGSEGV)", "exited with code 3".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        return format!(
            "its worker process was killed by signal {signal} ({})",
            signal_name(signal)
        );
    }
    match status.code() {
        Some(code) => format!("its worker process exited with code {code}"),
        None => "its worker process ended".to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGSEGV => "SIGSEGV, a segmentation fault",
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU, CPU time limit",
        _ => "signal",
    }
}

/// Re-logs the worker's stderr through the module's handle: the module's own log lines
/// (JSON from the worker) with their level and target, anything else (a Rust runtime's
/// last words before an abort, say) as a warning.
async fn forward_logs(
    stderr: tokio::process::ChildStderr,
    host: FfiHostBox,
    module: String,
    pid: u32,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match parse_log_line(&line) {
            Some((lvl, target, message)) => {
                host.log(lvl, RStr::from_str(&target), RStr::from_str(&message))
            }
            None if line.trim().is_empty() => {}
            None => {
                tracing::warn!(target: "modhost::module", module = %module, pid, "worker: {line}")
            }
        }
    }
}

/// A worker log line: `{"level":N,"target":"...","message":"..."}`.
fn parse_log_line(line: &str) -> Option<(u8, String, String)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let lvl = value.get("level")?.as_u64()?;
    let lvl = u8::try_from(lvl).ok()?.clamp(level::ERROR, level::TRACE);
    let target = value.get("target")?.as_str()?.to_string();
    let message = value.get("message")?.as_str()?.to_string();
    Some((lvl, target, message))
}

/// Writes one log line in the format [`forward_logs`] reads (used by the worker).
pub fn log_line(lvl: u8, target: &str, message: &str) -> String {
    serde_json::json!({ "level": lvl, "target": target, "message": message }).to_string()
}
