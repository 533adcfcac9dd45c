//! A real `modhost core` process for tests, killed on drop, with the addresses it logged.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::KillOnDrop;

/// A running `modhost core`, with the addresses it logged.
pub struct CoreProcess {
    child: KillOnDrop,
    /// Service (`Auth`, `Identity`, `Authz`, `Audit` or `All`) to its address.
    pub addrs: Vec<(String, SocketAddr)>,
}

impl CoreProcess {
    pub fn start(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> CoreProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
        cmd.args(["--log-format", "json", "core", "--data-dir"])
            .arg(data)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = KillOnDrop::spawn(&mut cmd);
        let expected = if args.contains(&"--grpc-listen") {
            1
        } else {
            4
        };
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let (Some(service), Some(local)) = (v["service"].as_str(), v["local"].as_str()) {
                    let _ = tx.send((service.to_string(), local.parse().expect("address")));
                }
            }
        });
        let mut addrs = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        while addrs.len() < expected {
            let left = until.saturating_duration_since(Instant::now());
            let got = rx
                .recv_timeout(left)
                .expect("modhost core did not log its listening addresses within 60 s");
            addrs.push(got);
        }
        CoreProcess { child, addrs }
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(s, _)| s == service || s == "All")
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no address for {service}: {:?}", self.addrs))
    }

    /// Kills the process now (as a crash would) and waits for it to go.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
