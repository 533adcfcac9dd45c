//! The operator's conveniences on the command line: shell completions and the man page
//! generated from the clap definition, and colour in text logs only on a terminal
//! (`--color auto`, the default), forced with `--color always` or `MODHOST_COLOR`.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{modhost, KillOnDrop};

#[test]
fn completions_and_the_man_page_are_generated_from_the_command_line() {
    for (shell, marker) in [
        ("bash", "_modhost()"),
        ("zsh", "#compdef modhost"),
        ("fish", "complete -c modhost"),
    ] {
        let (code, out, err) = modhost(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(marker), "{shell}: {out}");
        // Every command is offered.
        for command in ["run", "core", "check", "install", "completions"] {
            assert!(out.contains(command), "{shell} lacks {command}");
        }
    }
    let (code, _, err) = modhost(&["completions", "tcsh"]);
    assert_ne!(code, 0);
    assert!(err.contains("possible values"), "{err}");
    let (code, man, err) = modhost(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        man.starts_with(".ie") || man.contains(".TH modhost"),
        "{man}"
    );
    // roff escapes the dashes of `--color`.
    assert!(
        man.contains("completions") && man.contains("\\-\\-color"),
        "{man}"
    );
}

/// The first log lines of a `modhost run` on an empty modules folder, up to "ready".
fn first_logs(color: Option<&str>, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("modules")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
    if let Some(c) = color {
        cmd.args(["--color", c]);
    }
    cmd.arg("run")
        .arg("--modules")
        .arg(dir.path().join("modules"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("MODHOST_WATCH", "false")
        .env_remove("MODHOST_COLOR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop::spawn(&mut cmd);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("ready on") {
                let _ = tx.send(seen.clone());
                return;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    rx.recv_timeout(until - Instant::now())
        .expect("modhost logged that it is ready")
}

#[test]
fn logs_are_coloured_only_on_a_terminal_unless_asked() {
    const ESC: char = '\u{1b}';
    // stdout is a pipe here: no colour by default, nor with auto or never.
    for color in [None, Some("auto"), Some("never")] {
        let logs = first_logs(color, &[]);
        assert!(!logs.contains(ESC), "--color {color:?} into a pipe: {logs}");
    }
    let logs = first_logs(Some("always"), &[]);
    assert!(logs.contains(ESC), "--color always: {logs}");
    let logs = first_logs(None, &[("MODHOST_COLOR", "always")]);
    assert!(logs.contains(ESC), "MODHOST_COLOR=always: {logs}");
    // A bad value is refused, naming the variable and what it takes.
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["list", "."])
        .env("MODHOST_COLOR", "rainbow")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MODHOST_COLOR") && err.contains("auto, always or never"),
        "{err}"
    );
}
