//! The folder watcher: in events mode a library written in chunks is loaded only once it
//! is complete (the old version serves meanwhile, and no attempt on the partial file is
//! made); the polling fallback still applies changes.

mod common;

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use common::{lib_file, plugins, HostProcess, Modules};

fn manifest(name: &str, reply: &str) -> String {
    format!(
        "name: {name}\nversion: 1.0.0\npermissions: [{name}.probe.read, {name}.probe.write]\nconfig:\n  mode: ok\n  reply: {reply}\n"
    )
}

fn reply(host: &HostProcess, name: &str) -> Option<String> {
    let r = host.get(&format!("/api/v1/{name}/ok"));
    (r.status == 200).then(|| r.json()["reply"].as_str().unwrap_or_default().to_string())
}

/// Polls `what` until it returns `Some`, or panics after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `bytes` to `path` in ten chunks over about a second and returns the host's
/// answers from `name` seen while the file was incomplete (between chunks; not after the
/// last one, when the library is complete and may load at once).
fn write_in_chunks(path: &Path, bytes: &[u8], host: &HostProcess, name: &str) -> Vec<String> {
    let mut file = std::fs::File::create(path).expect("create library");
    let mut seen = Vec::new();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(10)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        file.write_all(chunk).expect("write chunk");
        file.flush().expect("flush");
        if i + 1 == chunks.len() {
            break;
        }
        // The writer's pace (a slow copy), not a synchronisation: the host must wait.
        let paced = Instant::now() + Duration::from_millis(100);
        while Instant::now() < paced {
            if let Some(r) = reply(host, name) {
                seen.push(r);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    seen
}

#[test]
fn a_library_written_in_chunks_is_loaded_only_once_complete() {
    let modules = Modules::new();
    let dir = modules.add("probe", "faulty", &manifest("probe", "v1"));
    let env = [("MODHOST_WATCH", "true")];
    let host = HostProcess::start(&modules, &env, &[]);
    assert_eq!(reply(&host, "probe").as_deref(), Some("v1"));

    // The new version: its manifest first, then its library written slowly in place.
    std::fs::write(dir.join("module.yaml"), manifest("probe", "v2")).expect("manifest");
    let library = std::fs::read(plugins().join(lib_file("faulty"))).expect("library");
    let seen = write_in_chunks(&dir.join(lib_file("faulty")), &library, &host, "probe");
    let written = Instant::now();
    assert!(
        seen.iter().all(|r| r == "v1"),
        "while the library was incomplete only v1 may answer: {seen:?}"
    );
    wait_for(Duration::from_secs(10), "v2 to answer", || {
        (reply(&host, "probe").as_deref() == Some("v2")).then_some(())
    });
    let refused = host
        .get("/api/v1/audit?action=module.reload&outcome=failure")
        .json();
    assert_eq!(
        refused.as_array().map(Vec::len),
        Some(0),
        "a reload was attempted on the incomplete library: {refused}"
    );
    // A drop-in written the same way: nothing is tried before it is complete.
    let late = modules.dir().join("late");
    std::fs::create_dir_all(&late).expect("late dir");
    std::fs::write(late.join("module.yaml"), manifest("late", "late")).expect("manifest");
    let seen = write_in_chunks(&late.join(lib_file("faulty")), &library, &host, "late");
    assert!(
        seen.is_empty(),
        "late answered before it was complete: {seen:?}"
    );
    wait_for(Duration::from_secs(10), "late to answer", || {
        reply(&host, "late").filter(|r| r == "late")
    });
    let failed = host.get("/api/v1/audit?action=module.fail").json();
    assert_eq!(
        failed.as_array().map(Vec::len),
        Some(0),
        "a drop-in was attempted on the incomplete library: {failed}"
    );
    assert!(written.elapsed() < Duration::from_secs(60));
}

/// The default setup: `--modules modules`, a path relative to where the host runs.
#[test]
fn events_mode_applies_a_rename_with_a_relative_modules_dir() {
    let mut modules = Modules::new();
    modules.relative_paths = true;
    let dir = modules.add("probe", "faulty", &manifest("probe", "v1"));
    let host = HostProcess::start(&modules, &[("MODHOST_WATCH", "true")], &[]);
    assert_eq!(reply(&host, "probe").as_deref(), Some("v1"));
    std::fs::write(dir.join(".module.yaml.new"), manifest("probe", "v2")).expect("stage");
    std::fs::rename(dir.join(".module.yaml.new"), dir.join("module.yaml")).expect("rename");
    wait_for(Duration::from_secs(10), "v2 to answer", || {
        (reply(&host, "probe").as_deref() == Some("v2")).then_some(())
    });
}

#[test]
fn poll_mode_applies_a_drop_in() {
    let modules = Modules::new();
    let env = [
        ("MODHOST_WATCH", "true"),
        ("MODHOST_WATCH_MODE", "poll"),
        ("MODHOST_WATCH_INTERVAL", "50ms"),
    ];
    let host = HostProcess::start(&modules, &env, &[]);
    assert_eq!(reply(&host, "dropped"), None);
    // Built beside the modules directory, then renamed in: one atomic step.
    let staging = modules.tmp.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("module.yaml"), manifest("dropped", "hi")).expect("manifest");
    std::fs::copy(
        plugins().join(lib_file("faulty")),
        staging.join(lib_file("faulty")),
    )
    .expect("library");
    std::fs::rename(&staging, modules.dir().join("dropped")).expect("rename in");
    wait_for(
        Duration::from_secs(10),
        "the dropped-in module to answer",
        || reply(&host, "dropped").filter(|r| r == "hi"),
    );
}
