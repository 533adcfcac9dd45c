//! The cluster engines as real processes for tests: etcd, nats-server (JetStream), a
//! Kafka-protocol broker (noida-db) and redis-server, each on free loopback ports with its own data directory, killed on
//! drop, and stoppable and restartable for the fault tests. `scripts/ensure-services.sh`
//! installs the servers; without one, [`have`] prints a SKIP line (and fails under CI).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::KillOnDrop;

/// Whether `tool` is installed; prints a SKIP line if not, and panics under CI.
pub fn have(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is required in CI (scripts/ensure-services.sh installs it)");
        }
        eprintln!("SKIP: {test}: {tool} is not installed (scripts/ensure-services.sh installs it)");
    }
    found
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < until,
            "{what} did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One engine server: its command line, its port, its process while it runs.
pub struct Server {
    what: &'static str,
    program: String,
    args: Vec<String>,
    pub port: u16,
    process: Option<KillOnDrop>,
    _data: tempfile::TempDir,
    data_dir: PathBuf,
}

impl Server {
    fn launch(
        what: &'static str,
        program: impl Into<String>,
        port: u16,
        args: impl Fn(&std::path::Path) -> Vec<String>,
    ) -> Server {
        let data = tempfile::tempdir().expect("engine data dir");
        let data_dir = data.path().to_path_buf();
        let mut server = Server {
            what,
            program: program.into(),
            args: args(&data_dir),
            port,
            process: None,
            _data: data,
            data_dir,
        };
        server.start();
        server
    }

    /// Starts the server (again), keeping its data.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.what);
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(KillOnDrop::spawn(&mut cmd));
        wait_listening(self.port, self.what);
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to go.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Stops it and starts it again with its data directory emptied (a server that
    /// lost its state).
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        std::fs::create_dir_all(&self.data_dir).expect("engine data dir");
        self.start();
    }
}

/// `etcd` on free client and peer ports.
pub fn etcd() -> Server {
    let (client, peer) = (free_port(), free_port());
    Server::launch("etcd", "etcd", client, move |dir| {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        vec![
            "--name".into(),
            "test".into(),
            "--data-dir".into(),
            dir.join("etcd").display().to_string(),
            "--listen-client-urls".into(),
            c.clone(),
            "--advertise-client-urls".into(),
            c,
            "--listen-peer-urls".into(),
            p.clone(),
            "--initial-advertise-peer-urls".into(),
            p.clone(),
            "--initial-cluster".into(),
            format!("test={p}"),
        ]
    })
}

/// `nats-server` with JetStream (file storage) on a free port.
pub fn nats() -> Server {
    let port = free_port();
    Server::launch("nats-server", "nats-server", port, move |dir| {
        vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.display().to_string(),
        ]
    })
}

/// A Kafka-protocol broker (noida-db, `scripts/kafka-broker.txt`) on a free port. Its
/// `noida-db` command is a Python launcher that runs the server as a child; the server
/// binary is started directly, so that stopping it stops the broker.
pub fn kafka() -> Server {
    let port = free_port();
    let located = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .expect("python3 (noida-db is a Python package)");
    let binary = String::from_utf8_lossy(&located.stdout).trim().to_string();
    assert!(
        located.status.success() && std::path::Path::new(&binary).is_file(),
        "noida-db's server binary not found: {}",
        String::from_utf8_lossy(&located.stderr)
    );
    Server::launch("noida-db (Kafka)", binary, port, move |dir| {
        vec![
            "start".into(),
            "--only".into(),
            "kafka".into(),
            "--kafka-port".into(),
            port.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
        ]
    })
}

/// `redis-server` on a free port, keeping nothing on disk.
pub fn redis() -> Server {
    let port = free_port();
    Server::launch("redis-server", "redis-server", port, move |dir| {
        vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
        ]
    })
}
