//! Shared helpers for the integration tests: building the real plugin libraries,
//! laying out modules directories, running the real `modhost` binary and talking HTTP
//! to it over loopback.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
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

/// Builds the plugin compiled against a changed plugin-api interface.
pub fn abi_mismatch_plugin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let fixture = workspace().join("host/tests/plugins/abi_mismatch");
        std::fs::copy(workspace().join("Cargo.lock"), fixture.join("Cargo.lock"))
            .expect("copy Cargo.lock into the fixture");
        let target = profile_dir().parent().expect("target dir").to_path_buf();
        let status = Command::new(cargo())
            .arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(fixture.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo build for the abi_mismatch fixture");
        assert!(status.success(), "building the abi_mismatch fixture failed");
        target.join("debug").join(lib_file("abi_mismatch"))
    })
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
}

impl Modules {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("modules")).expect("modules dir");
        Self { tmp }
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

/// A running `modhost run` process with JSON logs captured.
pub struct HostProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
        cmd.arg("--log-format")
            .arg("json")
            .arg("run")
            .arg("--modules")
            .arg(modules.dir())
            .arg("--data-dir")
            .arg(modules.data())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn modhost");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(local) = v.get("local").and_then(|l| l.as_str()) {
                    let _ = tx.send(local.to_string());
                }
                sink.lock().unwrap().push(v);
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(local) => {
                let token = admin_token(modules, env);
                Ok(HostProcess {
                    child,
                    addr: local.parse().expect("listen address"),
                    logs,
                    token,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let lines = logs.lock().unwrap().iter().map(|v| v.to_string()).collect();
                Err((
                    format!("modhost did not become ready; stderr: {err}"),
                    lines,
                ))
            }
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

    /// Waits (up to 30 s) for the process to exit; returns the exit code and the logs.
    pub fn wait_exit(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return (status.code(), self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "modhost did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET with the operator token.
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

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
