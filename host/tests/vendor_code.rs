//! Vendor code never runs before it is verified: `modhost check` applies the same trust
//! policy as `run` and refuses an unsigned library without handing it to the dynamic
//! loader (whose ELF constructors would run it). Also: `modhost keygen` keeps secrets.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Builds a shared library whose ELF constructor creates the file named by
/// `$MODHOST_TEST_MARKER`: proof that the library's code ran.
fn library_with_constructor(dir: &Path) -> PathBuf {
    let src = dir.join("ctor.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void ran(void) {
    const char *path = getenv("MODHOST_TEST_MARKER");
    if (path) { FILE *f = fopen(path, "w"); if (f) { fputs("ran", f); fclose(f); } }
}
"#,
    )
    .expect("write C source");
    let lib = dir.join("libvendor.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("run cc (gcc is needed to build this test's library)");
    assert!(status.success(), "cc failed");
    lib
}

/// A modules dir holding one unsigned module `vendor` with that library.
fn modules_with_unsigned_module(root: &Path) -> PathBuf {
    let modules = root.join("modules");
    let dir = modules.join("vendor");
    std::fs::create_dir_all(&dir).expect("module dir");
    std::fs::write(dir.join("module.yaml"), "name: vendor\nversion: 1.0.0\n").expect("manifest");
    let lib = library_with_constructor(root);
    std::fs::copy(lib, dir.join("libvendor.so")).expect("copy library");
    modules
}

fn check(modules: &Path, marker: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modhost"));
    cmd.arg("check")
        .arg(modules)
        .args(args)
        .env("MODHOST_TEST_MARKER", marker)
        .env_remove("MODHOST_REQUIRE_SIGNATURES")
        .env_remove("MODHOST_TRUSTED_KEYS")
        .env_remove("MODHOST_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run modhost check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_refuses_an_unsigned_library_without_running_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let modules = modules_with_unsigned_module(tmp.path());
    let marker = tmp.path().join("constructor-ran");

    // Policy from the flag, from the environment and from a config file: each refuses
    // the module as unsigned, and its constructor never runs.
    let config = tmp.path().join("modhost.toml");
    std::fs::write(&config, "require_signatures = true\n").expect("config");
    let config_arg = config.to_string_lossy().into_owned();
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: [Case; 3] = [
        ("--require-signatures", vec!["--require-signatures"], vec![]),
        (
            "MODHOST_REQUIRE_SIGNATURES",
            vec![],
            vec![("MODHOST_REQUIRE_SIGNATURES", "true")],
        ),
        ("--config", vec!["--config", &config_arg], vec![]),
    ];
    for (how, args, env) in cases {
        let (code, stdout) = check(&modules, &marker, &args, &env);
        assert_eq!(code, 1, "{how}: check must fail; stdout:\n{stdout}");
        assert!(
            stdout.contains("unsigned module"),
            "{how}: the problem must say the module is unsigned; stdout:\n{stdout}"
        );
        assert!(
            !marker.exists(),
            "{how}: the library's constructor ran: check loaded vendor code before verifying it"
        );
    }

    // Without the requirement the library is loaded (its constructor runs) and refused
    // as not being a modhost module: this shows the marker does detect loading.
    let (code, stdout) = check(&modules, &marker, &[], &[]);
    assert_eq!(code, 1, "stdout:\n{stdout}");
    assert!(stdout.contains("not a modhost module"), "stdout:\n{stdout}");
    assert!(marker.exists(), "the library was expected to be loaded");
}

#[test]
fn keygen_writes_the_secret_owner_only_and_never_overwrites_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("keys");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_modhost"))
            .args(["keygen", "--out"])
            .arg(&out)
            .output()
            .expect("run modhost keygen")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let secret = out.join("vendor.key");
    let before = std::fs::read_to_string(&secret).expect("secret written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let second = run();
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret still there"),
        before,
        "the existing secret key must be left as it was"
    );
}
