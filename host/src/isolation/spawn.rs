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
use tokio::io::BufReader;
use tonic::transport::{Endpoint, Server};

use crate::isolation::{
    callbacks::Callbacks, link::WorkerLink, proxies::Deadlines, settings::WorkerLimits,
    slot::WorkerSlot, ExitSender, WorkerExit,
};
use crate::wire::module_v1::{module_host_server::ModuleHostServer, worker_client::WorkerClient};

/// The socket the worker serves `Worker` on, inside its directory.
pub const WORKER_SOCKET: &str = "worker.sock";
/// The socket the host serves `ModuleHost` on, inside the worker's directory.
pub const HOST_SOCKET: &str = "host.sock";
/// The status message of a route handler that panicked in the worker.
pub const HANDLER_PANICKED: &str = "the module's route handler panicked";

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
    /// The module's current worker, for event deliveries.
    pub slot: Arc<WorkerSlot>,
    /// The largest message either side accepts (bodies, responses, state, cache values).
    pub message_limit: usize,
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
    let channel = unix_channel(worker_socket);
    let (kill_tx, kill_rx) = tokio::sync::mpsc::unbounded_channel();
    let client = WorkerClient::new(channel)
        .max_decoding_message_size(launch.message_limit)
        .max_encoding_message_size(launch.message_limit);
    let link = Arc::new(WorkerLink::new(&module, client, kill_tx));

    let listener = match tokio::net::UnixListener::bind(launch.dir.join(HOST_SOCKET)) {
        Ok(listener) => listener,
        Err(e) => {
            remove_dirs(launch.dir, launch.scratch);
            return Err(format!("cannot listen on {}: {e}", launch.dir.display()));
        }
    };
    let callbacks = Callbacks::new(
        host.clone(),
        link.clone(),
        launch.slot.clone(),
        launch.deadlines,
    );
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let expected = link.clone();
    let limit = launch.message_limit;
    tokio::spawn(async move {
        // Only this worker may call back as this module.
        let incoming = only_from(listener, move || expected.pid());
        let served = Server::builder()
            .add_service(
                ModuleHostServer::new(callbacks)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = server_stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "a worker's callback server ended with an error");
        }
    });

    let mut child = match command(&launch).spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = server_stop.send(());
            remove_dirs(launch.dir, launch.scratch);
            return Err(format!(
                "cannot start {} worker: {e}",
                launch.program.display()
            ));
        }
    };
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

    // Until the worker is handed over, dropping this future (its caller gave up) ends it.
    let mut unready = RetireOnDrop(Some(link.clone()));
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    if let Some(stdout) = stdout {
        tokio::spawn(forward_stdout(stdout, ready_tx, module.clone(), pid));
    }
    match tokio::time::timeout(launch.ready_within, ready).await {
        Ok(Ok(())) => {
            tracing::info!(module = %module, pid, "worker process started");
            unready.0 = None;
            Ok(link)
        }
        Ok(Err(_)) => Err(format!(
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

/// The connections to `listener` from the process `pid()` names; any other is closed
/// at once and logged. Other processes of the same user (another module's worker
/// among them) may reach the socket's path, so its peer is checked.
pub fn only_from(
    listener: tokio::net::UnixListener,
    pid: impl Fn() -> u32 + Send + 'static,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter(move |stream| {
        let Ok(stream) = stream else {
            return true;
        };
        let peer = stream.peer_cred().ok().and_then(|c| c.pid());
        let expected = pid();
        let ok = peer.and_then(|p| u32::try_from(p).ok()) == Some(expected);
        if !ok {
            tracing::warn!(
                ?peer,
                expected,
                "refused a connection to a worker socket from another process"
            );
        }
        ok
    })
}

/// Retires a worker that was started but not handed over.
struct RetireOnDrop(Option<Arc<WorkerLink>>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.retire("it was not needed any more");
        }
    }
}

fn remove_dirs(dir: &Path, scratch: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(scratch);
}

/// A gRPC channel to the Unix socket at `path`, connecting on first use.
pub fn unix_channel(path: PathBuf) -> tonic::transport::Channel {
    Endpoint::from_static("http://unix.invalid").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        },
    ))
}

/// A new directory only this user may enter. It must not exist yet: one that does
/// could belong to someone else (under the temporary directory, say).
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(path)
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
        .arg(launch.scratch)
        .arg("--message-limit")
        .arg(launch.message_limit.to_string());
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
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe system calls run
    // (setrlimit, prctl, getppid, kill); nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || apply_limits(memory, files, parent));
    }
    cmd
}

/// Runs in the child between fork and exec.
fn apply_limits(memory: Option<u64>, open_files: u64, parent: u32) -> std::io::Result<()> {
    // Lowers both limits to `value`, never above the hard limit the host has (raising
    // it would need privileges, and fail).
    let set = |resource, value: u64| {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls with valid pointers to locals.
        unsafe {
            if libc::getrlimit(resource, &mut current) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let value = (value as libc::rlim_t).min(current.rlim_max);
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &limit) == 0 {
                return Ok(());
            }
            // Under valgrind the hard limit of open files cannot change: lower the soft
            // one alone there.
            let soft = libc::rlimit {
                rlim_cur: value,
                rlim_max: current.rlim_max,
            };
            match libc::setrlimit(resource, &soft) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
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
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
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
    remove_dirs(&dirs.0, &dirs.1);
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
    each_line(stderr, |line| match parse_log_line(&line) {
        Some((lvl, target, message)) => {
            host.log(lvl, RStr::from_str(&target), RStr::from_str(&message))
        }
        None if line.trim().is_empty() => {}
        None => tracing::warn!(target: "modhost::module", module = %module, pid, "worker: {line}"),
    })
    .await;
}

/// Waits for the worker's ready line, then re-logs what the module prints on stdout at
/// info level (in-process it would go to the host's stdout; a closed pipe would make the
/// module's `println!` panic).
async fn forward_stdout(
    stdout: tokio::process::ChildStdout,
    ready: tokio::sync::oneshot::Sender<()>,
    module: String,
    pid: u32,
) {
    let mut ready = Some(ready);
    each_line(stdout, |line| {
        if ready.is_some() && line.trim() == READY_LINE {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            return;
        }
        tracing::info!(target: "modhost::module", module = %module, pid, "stdout: {line}");
    })
    .await;
}

/// The longest line kept from a worker's output; the rest of a longer line is dropped.
const MAX_LINE: usize = 64 * 1024;

/// Calls `f` with each line `from` writes, until it closes: invalid UTF-8 is replaced,
/// and a line is cut at [`MAX_LINE`] bytes, so a worker cannot make the host buffer
/// without bound or stop reading.
async fn each_line(from: impl tokio::io::AsyncRead + Unpin, mut f: impl FnMut(String)) {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if end.is_some() {
            f(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
    }
    if !line.is_empty() {
        f(String::from_utf8_lossy(&line).into_owned());
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
