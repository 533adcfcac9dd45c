//! `scripts/new-plugin.sh` produces a plugin that builds, loads and answers, as the
//! plugin author's guide promises.

mod common;

use std::process::Command;

use common::{lib_file, workspace, HostProcess, Modules};

#[test]
fn scaffolded_plugin_builds_loads_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join("greeter");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/new-plugin.sh"))
        .args(["greeter", "--dir"])
        .arg(&crate_dir)
        .status()
        .unwrap();
    assert!(status.success());
    // Same dependency versions and target dir as the workspace: nothing is rebuilt twice.
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = common::profile_dir().parent().unwrap().to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&crate_dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success(), "the scaffolded crate must build");

    let m = Modules::new();
    let dest = m.dir().join("greeter");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(crate_dir.join("module.yaml"), dest.join("module.yaml")).unwrap();
    std::fs::copy(
        target.join("debug").join(lib_file("greeter")),
        dest.join(lib_file("greeter")),
    )
    .unwrap();
    let host = HostProcess::start(&m, &[], &[]);
    let resp = host.get("/api/v1/greeter/hello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["message"], "Hello from greeter");
}

#[test]
fn using_an_undeclared_permission_does_not_compile() {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join("sneaky");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/new-plugin.sh"))
        .args(["sneaky", "--dir"])
        .arg(&crate_dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let lib = crate_dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    assert!(code.contains("permissions::GREETING_READ"));
    std::fs::write(
        &lib,
        code.replace("permissions::GREETING_READ", "permissions::GREETING_DELETE"),
    )
    .unwrap();
    let target = common::profile_dir().parent().unwrap().to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&crate_dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a permission missing from module.yaml must not compile"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GREETING_DELETE") && stderr.contains("permissions"),
        "{stderr}"
    );
}

#[test]
fn scaffold_refuses_bad_names() {
    for bad in ["Greeter", "9lives", "has-dash", ""] {
        let out = Command::new("bash")
            .arg(workspace().join("scripts/new-plugin.sh"))
            .arg(bad)
            .args(["--dir", "/nonexistent/never-created"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}
