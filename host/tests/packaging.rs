//! Vendors package, operators install: `modhost package` release-builds a module crate
//! that lives outside this repository, strips, assembles, signs and archives it;
//! `modhost install` checks the archive under the trust policy and moves it into the
//! modules directory of a running, watching host, which loads it once. A tampered
//! package is refused and leaves the modules directory untouched. `modhost check` on
//! one module folder checks that module and reports its dependencies.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{workspace, HostProcess, Modules};

fn modhost_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .current_dir(dir)
        .args(args)
        // The crate's release build shares the workspace's target dir and lock file:
        // dependencies are compiled once.
        .env("CARGO_TARGET_DIR", common::profile_dir().parent().unwrap())
        .output()
        .expect("run modhost");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scaffolded module crate `name` outside the workspace, with a migration, packaged
/// and signed; returns (work dir, archive, public key). Each test packages its own
/// crate name, so parallel builds never write the same library file.
fn packaged(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let crate_dir = tmp.path().join(name);
    let status = Command::new("bash")
        .arg(workspace().join("scripts/new-plugin.sh"))
        .args([name, "--dir"])
        .arg(&crate_dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(crate_dir.join("migrations")).unwrap();
    std::fs::write(
        crate_dir.join("migrations/0001_notes.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);\n",
    )
    .unwrap();
    let (code, out, err) = modhost_in(tmp.path(), &["keygen", "--out", "keys"]);
    assert_eq!(code, 0, "{out}{err}");
    let public = std::fs::read_to_string(tmp.path().join("keys/vendor.pub"))
        .unwrap()
        .trim()
        .to_string();
    let (code, out, err) = modhost_in(
        tmp.path(),
        &[
            "package",
            name,
            "--out",
            "dist",
            "--sign",
            "keys/vendor.key",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let files =
        format!("files:   lib{name}.so, migrations/0001_notes.sql, module.sig, module.yaml");
    assert!(out.contains(&files), "{out}");
    assert!(out.contains(&format!("signed by {public}")), "{out}");
    let folder = tmp.path().join("dist").join(name);
    let library = std::fs::read(folder.join(format!("lib{name}.so"))).unwrap();
    assert!(
        !library.windows(8).any(|w| w == b".symtab\0"),
        "the library is stripped of its symbol table"
    );
    let archive = tmp.path().join(format!("dist/{name}-0.1.0.tar.gz"));
    assert!(archive.is_file(), "{out}");
    (tmp, archive, public)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// No staging folder is left behind, and nothing but `expected` is installed.
fn assert_modules(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected, "modules directory {}", dir.display());
}

#[test]
fn a_package_from_outside_the_repository_installs_into_a_watching_host_once() {
    let (tmp, archive, public) = packaged("greeter");
    let m = Modules::new();
    let env = [
        ("MODHOST_TRUSTED_KEYS", public.as_str()),
        ("MODHOST_REQUIRE_SIGNATURES", "true"),
    ];
    let host = HostProcess::start(&m, &env, &["--watch"]);
    let modules = m.dir();
    let modules_arg = modules.to_str().unwrap();

    // A tampered package (a migration edited under the signature) is refused, naming
    // the file, and the modules directory is left as it was.
    let tampered = tmp.path().join("tampered/greeter");
    std::fs::create_dir_all(tampered.parent().unwrap()).unwrap();
    let (code, out, err) = modhost_in(
        tmp.path(),
        &["install", "dist/greeter", "--modules", "tampered-dest"],
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("cannot read the modules directory"), "{err}");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(tmp.path().join("dist/greeter"))
        .arg(tampered.parent().unwrap())
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::write(
        tampered.join("migrations/0001_notes.sql"),
        "CREATE TABLE greeter_notes (id INTEGER PRIMARY KEY); DROP TABLE IF EXISTS users;\n",
    )
    .unwrap();
    let (code, out, err) = modhost_in(
        tmp.path(),
        &[
            "install",
            tampered.to_str().unwrap(),
            "--modules",
            modules_arg,
            "--trusted-key",
            &public,
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("migrations/0001_notes.sql was changed after signing"),
        "{err}"
    );
    assert!(
        err.contains(tampered.to_str().unwrap()),
        "names the package: {err}"
    );
    assert_modules(&modules, &[]);

    // The signed archive installs, and the watching host loads it once.
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            archive.to_str().unwrap(),
            "--modules",
            modules_arg,
            "--trusted-key",
            &public,
            "--require-signatures",
        ];
        args.extend_from_slice(extra);
        modhost_in(tmp.path(), &args)
    };
    let (code, out, err) = install(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "installed greeter 0.1.0 in {modules_arg}/greeter (signed by {public})"
        )),
        "{out}"
    );
    assert_modules(&modules, &["greeter"]);
    wait_for("greeter started", || {
        host.module("greeter")["state"] == "started"
    });
    assert_eq!(host.module("greeter")["signed_by"], public.as_str());
    let hello = host.get("/api/v1/greeter/hello");
    assert_eq!(hello.status, 200, "{}", hello.text());
    let loaded = |host: &HostProcess| {
        host.logs()
            .iter()
            .filter(|l| l["message"] == "module loaded" && l["module"] == "greeter")
            .count()
    };
    // The log lines arrive through a pipe read by another thread: wait for the line,
    // then check there is one.
    wait_for("greeter's load logged", || loaded(&host) >= 1);
    assert_eq!(loaded(&host), 1, "loaded once");
    assert!(
        host.logs()
            .iter()
            .any(|l| l["message"] == "migrations applied" && l["module"] == "greeter"),
        "the packaged migration ran"
    );

    // Installing it again needs --replace; with it, the host reloads the module.
    let (code, out, err) = install(&[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("pass --replace"), "{err}");
    let (code, out, err) = install(&["--replace"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("replaced greeter 0.1.0"), "{out}");
    assert_modules(&modules, &["greeter"]);
    wait_for("the replaced greeter reloaded", || loaded(&host) == 2);
    wait_for("greeter started again", || {
        host.module("greeter")["state"] == "started"
    });
    assert_eq!(host.get("/api/v1/greeter/hello").status, 200);
}

#[test]
fn check_on_one_module_folder_checks_it_and_reports_its_dependencies() {
    let (tmp, _archive, public) = packaged("hailer");
    let folder = tmp.path().join("dist/hailer");
    let folder_arg = folder.to_str().unwrap();

    // Signed by a key the policy trusts: ok, with who signed it.
    let (code, out, err) = modhost_in(tmp.path(), &["check", folder_arg, "--trusted-key", &public]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("note: hailer: signed by {public} (3 files)")),
        "{out}"
    );
    assert!(out.contains("ok: 1 module(s)"), "{out}");
    // The same policy as `run`: an untrusted signer, or an unsigned module when
    // signatures are required, is a problem (through the environment too).
    let (code, out, _) = modhost_in(tmp.path(), &["check", folder_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("which this host does not trust"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["check", folder_arg])
        .env("MODHOST_TRUSTED_KEYS", &public)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Dependencies are reported, not required; a tampered file is a problem.
    let manifest = folder.join("module.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("{text}dependencies:\n  billing: \">=1.0\"\n"),
    )
    .unwrap();
    std::fs::remove_file(folder.join("module.sig")).unwrap();
    let (code, out, err) = modhost_in(tmp.path(), &["check", folder_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("note: hailer: unsigned"), "{out}");
    assert!(
        out.contains("note: hailer depends on billing >=1.0: not present here"),
        "{out}"
    );
    let (code, out, _) = modhost_in(tmp.path(), &["check", folder_arg, "--require-signatures"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unsigned module, and this host requires signatures"),
        "{out}"
    );

    // `--out` pointing where the crate itself lives is refused: nothing is deleted.
    let (code, out, err) = modhost_in(tmp.path(), &["package", "hailer", "--out", "."]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("is not an earlier package of this module"),
        "{err}"
    );
    assert!(
        tmp.path().join("hailer/src/lib.rs").is_file(),
        "the crate is untouched"
    );

    // A module installed under another folder name is the one to replace.
    let modules = tmp.path().join("mods");
    std::fs::create_dir_all(&modules).unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(tmp.path().join("dist/hailer"))
        .arg(modules.join("hailer-old"))
        .status()
        .unwrap();
    assert!(copy.success());
    let archive = tmp.path().join("dist/hailer-0.1.0.tar.gz");
    let (code, out, err) = modhost_in(
        tmp.path(),
        &[
            "install",
            archive.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
            "--trusted-key",
            &public,
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("hailer-old") && err.contains("--replace"),
        "{err}"
    );

    // An archive holding a symbolic link is refused before anything is installed.
    let evil = tmp.path().join("evil.tar.gz");
    {
        let file = std::fs::File::create(&evil).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, "hailer", "/etc").unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let (code, out, err) = modhost_in(
        tmp.path(),
        &[
            "install",
            evil.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is a link or a special file"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&modules)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hailer-old"], "nothing else was installed");

    // A directory with no module is not a pass.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out, _) = modhost_in(tmp.path(), &["check", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no module in"), "{out}");
}
