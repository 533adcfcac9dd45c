//! Shared helpers for the integration tests: building the real plugin libraries,
//! laying out modules directories, running the real `modhost` binary and talking HTTP
//! to it over loopback.

#![allow(dead_code)]

pub mod core;
pub mod engines;
pub mod pg;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory the test binary was built into (`target/debug`), where the plugins land.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the example and test plugins once per test binary; returns the profile dir.
pub fn plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace()).arg("build").arg("--quiet");
        for p in ["hello", "blog", "billing", "notifications", "faulty"] {
            cmd.args(["-p", p]);
        }
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the plugins");
        assert!(status.success(), "building the plugins failed");
        profile_dir()
    })
}

/// Builds one package of a fixture workspace outside the main one (alone, so its
/// plugin-api features and version are its own), with the main target dir and a copy of
/// the main Cargo.lock; returns the library's path.
fn build_fixture(fixture: &Path, package: &str) -> PathBuf {
    // The packages of one fixture workspace share its lock file: copy it once each.
    static LOCKS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    {
        let mut copied = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if !copied.iter().any(|f| f == fixture) {
            std::fs::copy(workspace().join("Cargo.lock"), fixture.join("Cargo.lock"))
                .expect("copy Cargo.lock into the fixture");
            copied.push(fixture.to_path_buf());
        }
    }
    let target = profile_dir().parent().expect("target dir").to_path_buf();
    let status = Command::new(cargo())
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(fixture.join("Cargo.toml"))
        .args(["-p", package])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .unwrap_or_else(|e| panic!("run cargo build for the {package} fixture: {e}"));
    assert!(status.success(), "building the {package} fixture failed");
    target.join("debug").join(lib_file(package))
}

fn build_mismatch_fixture(package: &str) -> PathBuf {
    build_fixture(
        &workspace().join("host/tests/plugins/abi_mismatch"),
        package,
    )
}

/// Builds `compat/module-1.0`: a module compiled against the frozen plugin-api 1.0.
pub fn compat_v1_0_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_fixture(&workspace().join("compat"), "compat_v1_0"))
}

/// Builds the plugin compiled against a changed plugin-api interface.
pub fn abi_mismatch_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_mismatch_fixture("abi_mismatch"))
}

/// Builds the plugin whose library reports plugin-api 0.4.0.
pub fn version_mismatch_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_mismatch_fixture("version_mismatch"))
}

/// Builds the plugin whose library reports plugin-api 1.99.0.
pub fn newer_minor_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_mismatch_fixture("newer_minor"))
}

/// `libNAME.so` on Linux, and so on.
pub fn lib_file(crate_name: &str) -> String {
    format!(
        "{}{crate_name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    )
}

/// A temporary modules directory (and data dir) for one test.
pub struct Modules {
    pub tmp: tempfile::TempDir,
    /// Start the host inside `tmp` with `--modules modules --data-dir data`, as an
    /// operator typing relative paths would.
    pub relative_paths: bool,
}

impl Modules {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("modules")).expect("modules dir");
        Self {
            tmp,
            relative_paths: false,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("modules")
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// Adds folder `folder` with `manifest` and a copy of the built plugin `crate_name`.
    pub fn add(&self, folder: &str, crate_name: &str, manifest: &str) -> PathBuf {
        let dir = self.dir().join(folder);
        std::fs::create_dir_all(&dir).expect("module dir");
        std::fs::write(dir.join("module.yaml"), manifest).expect("write manifest");
        let lib = plugins().join(lib_file(crate_name));
        std::fs::copy(&lib, dir.join(lib_file(crate_name))).expect("copy library");
        dir
    }

    /// Adds an example plugin with its manifest and migrations from `plugins/<name>/`.
    pub fn add_example(&self, name: &str) -> PathBuf {
        let src = workspace().join("plugins").join(name);
        let manifest = std::fs::read_to_string(src.join("module.yaml")).expect("example manifest");
        let dir = self.add(name, name, &manifest);
        if let Ok(files) = std::fs::read_dir(src.join("migrations")) {
            std::fs::create_dir_all(dir.join("migrations")).expect("migrations dir");
            for f in files.flatten() {
                std::fs::copy(f.path(), dir.join("migrations").join(f.file_name()))
                    .expect("copy migration");
            }
        }
        dir
    }

    /// Adds a `faulty` module named `name` in `mode`, with optional extra manifest lines.
    pub fn add_faulty(&self, name: &str, mode: &str, extra: &str) -> PathBuf {
        let manifest = format!(
            "name: {name}\nversion: 1.0.0\npermissions: [{name}.probe.read, {name}.probe.write]\n{extra}config:\n  mode: {mode}\n"
        );
        self.add(name, "faulty", &manifest)
    }
}

/// A child process that is killed (and reaped) when dropped, so no test leaves one
/// behind, even when it panics right after spawning it.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Spawns `cmd`; the child is owned by the guard from that moment on.
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program())),
        )
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins `thread`, waiting at most until `deadline` for it to finish.
fn join_by(thread: JoinHandle<()>, deadline: Instant, what: &str) {
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "{what} did not finish in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap_or_else(|_| panic!("{what} panicked"));
}

/// The `modhost run` command for `modules` (JSON logs, ephemeral port).
fn run_command(modules: &Modules, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
    let (dir, data) = match modules.relative_paths {
        true => {
            cmd.current_dir(modules.tmp.path());
            (PathBuf::from("modules"), PathBuf::from("data"))
        }
        false => (modules.dir(), modules.data()),
    };
    cmd.arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--modules")
        .arg(dir)
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

type Logs = Arc<Mutex<Vec<serde_json::Value>>>;

/// Reads the child's JSON log lines (stdout) into `logs` until EOF, sending the listen
/// address to `ready` when it is logged.
fn read_logs(
    child: &mut Child,
    logs: Logs,
    ready: std::sync::mpsc::Sender<String>,
) -> JoinHandle<()> {
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(local) = v.get("local").and_then(|l| l.as_str()) {
                let _ = ready.send(local.to_string());
            }
            logs.lock().unwrap().push(v);
        }
    })
}

/// Reads the child's stderr into a string until EOF.
fn read_stderr(child: &mut Child) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let mut stderr = child.stderr.take().expect("stderr");
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        sink.lock().unwrap().push_str(&buf);
    });
    (text, thread)
}

/// How a `modhost run` that was expected to exit on its own ended.
pub struct Exited {
    pub code: Option<i32>,
    pub logs: Vec<serde_json::Value>,
    pub stderr: String,
}

/// A running `modhost run` process with JSON logs captured.
pub struct HostProcess {
    child: KillOnDrop,
    pub addr: SocketAddr,
    logs: Logs,
    /// The thread reading stdout into `logs`; it ends when the process exits.
    reader: Option<JoinHandle<()>>,
    /// An operator token (every permission) from `modhost admin token`.
    pub token: String,
}

impl HostProcess {
    /// Starts the host on an ephemeral port and waits until it is ready.
    pub fn start(modules: &Modules, env: &[(&str, &str)], args: &[&str]) -> HostProcess {
        match Self::try_start(modules, env, args) {
            Ok(h) => h,
            Err((msg, logs)) => panic!("{msg}\nlogs:\n{}", logs.join("\n")),
        }
    }

    /// Starts the host; on failure returns why and the log lines seen.
    pub fn try_start(
        modules: &Modules,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<HostProcess, (String, Vec<String>)> {
        let mut child = KillOnDrop::spawn(&mut run_command(modules, env, args));
        let logs: Logs = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = read_logs(&mut child, logs.clone(), tx);
        // Drained all along, so a chatty stderr can never block the host.
        let (stderr, stderr_reader) = read_stderr(&mut child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(local) => {
                // `child` is in its kill-on-drop guard: a panic here still ends it.
                let token = admin_token(modules, env);
                Ok(HostProcess {
                    child,
                    addr: local.parse().expect("listen address"),
                    logs,
                    reader: Some(reader),
                    token,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let deadline = Instant::now() + Duration::from_secs(10);
                join_by(stderr_reader, deadline, "the stderr reader");
                join_by(reader, deadline, "the log reader");
                let err = stderr.lock().unwrap().clone();
                let lines = logs.lock().unwrap().iter().map(|v| v.to_string()).collect();
                Err((
                    format!("modhost did not become ready; stderr: {err}"),
                    lines,
                ))
            }
        }
    }

    /// Runs `modhost run` expecting it to exit by itself (e.g. `--strict` with a failing
    /// module) within `limit`; panics if it is still running then.
    pub fn run_to_exit(
        modules: &Modules,
        env: &[(&str, &str)],
        args: &[&str],
        limit: Duration,
    ) -> Exited {
        let mut child = KillOnDrop::spawn(&mut run_command(modules, env, args));
        let logs: Logs = Arc::default();
        let (tx, _rx) = std::sync::mpsc::channel();
        let reader = read_logs(&mut child, logs.clone(), tx);
        let (stderr, stderr_reader) = read_stderr(&mut child);
        let status = child.wait_timeout(limit);
        let deadline = Instant::now() + Duration::from_secs(10);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            join_by(stderr_reader, deadline, "the stderr reader");
            panic!(
                "modhost run did not exit within {limit:?}; stderr: {}",
                stderr.lock().unwrap()
            );
        };
        join_by(reader, deadline, "the log reader");
        join_by(stderr_reader, deadline, "the stderr reader");
        let logs = logs.lock().unwrap().clone();
        let stderr = stderr.lock().unwrap().clone();
        Exited {
            code: status.code(),
            logs,
            stderr,
        }
    }

    /// Log events captured so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(self) -> (Option<i32>, Vec<serde_json::Value>) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.wait_exit()
    }

    /// Waits (up to 30 s) for the process to exit; returns the exit code and the logs,
    /// every line of them: the log reader is joined (it ends at the pipe's EOF).
    pub fn wait_exit(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        let status = self
            .child
            .wait_timeout(Duration::from_secs(30))
            .expect("modhost did not exit within 30 s after SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(reader) = self.reader.take() {
            join_by(reader, deadline, "the log reader");
        }
        (status.code(), self.logs())
    }

    /// GET with the operator token.
    /// The entry for module `name` in `/admin/modules`, or `Null` when the host does
    /// not list it.
    pub fn module(&self, name: &str) -> serde_json::Value {
        let all = self.get("/admin/modules").json();
        all.as_array()
            .and_then(|modules| modules.iter().find(|m| m["name"] == name))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, b"")
    }

    /// A request with the operator token.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.request_as(&self.token, method, path, body)
    }

    /// A request with `token`.
    pub fn request_as(&self, token: &str, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http(self.addr, method, path, &[("authorization", &auth)], body)
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh loopback connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write request");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

/// Sends `raw` bytes as they are over a fresh loopback connection and reads the answer
/// until the host closes it. Write errors are ignored (the host may answer and close
/// before it has read everything); what was received is parsed.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = stream.write_all(raw);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived: keep what was read.
            Err(e) if !got.is_empty() => {
                eprintln!("http_raw: read ended with {e} after {} bytes", got.len());
                break;
            }
            Err(e) => panic!("read response: {e}"),
        }
    }
    parse_response(&got)
}

/// Builds a small C shared library (not a modhost module) at `dest` with the C compiler
/// (`$CC`, default `cc`).
pub fn build_c_shared_library(dest: &Path) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let src = scratch.path().join("plain.c");
    std::fs::write(
        &src,
        "int plain_answer(void) { return 42; }\nconst char plain_text[] = \"not a module\";\n",
    )
    .expect("write C source");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(dest)
        .arg(&src)
        .output()
        .expect("run the C compiler (cc)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses a raw HTTP/1.1 response with a content-length body.
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// An operator token for the host data of `modules` (same env as the host).
pub fn admin_token(modules: &Modules, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
    cmd.args(["admin", "token", "--ttl", "1h", "--data-dir"])
        .arg(modules.data());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run modhost admin token");
    assert!(
        out.status.success(),
        "admin token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `modhost ARGS` to completion; returns (exit code, stdout, stderr).
pub fn modhost(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(args)
        .output()
        .expect("run modhost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The messages of captured log events that carry `field` = `value`.
pub fn messages_with(logs: &[serde_json::Value], field: &str, value: &str) -> Vec<String> {
    logs.iter()
        .filter(|v| v.get(field).and_then(|f| f.as_str()) == Some(value))
        .filter_map(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .collect()
}

/// Where the host runs every module in a test that runs in both modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the host's process (the default).
    InProcess,
    /// Each module in a worker process of its own (`isolation = "process"`).
    Isolated,
}

impl Mode {
    /// The host setting that selects this mode for every module.
    pub fn env(self) -> (&'static str, &'static str) {
        match self {
            Mode::InProcess => ("MODHOST_ISOLATION", "in-process"),
            Mode::Isolated => ("MODHOST_ISOLATION", "process"),
        }
    }
}

/// Declares tests that run the named functions (each taking a [`Mode`]) once with
/// every module in-process and once with every module isolated: the same cases, in both
/// modes. `name::in_process` and `name::isolated` are the tests' names.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn in_process() {
                    super::$name(super::common::Mode::InProcess)
                }
                #[test]
                fn isolated() {
                    super::$name(super::common::Mode::Isolated)
                }
            }
        )*
    };
}
