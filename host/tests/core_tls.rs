//! TLS between module hosts and `modhost core`, with mutual TLS: the core requires a
//! client certificate signed by its client CA. A host with one is served; a host
//! without a certificate, or with one the CA did not sign, is refused, and says so on
//! `/readyz`. Certificates are made by the test (rcgen).

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{core::CoreProcess, HostProcess, Modules};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Writes `name.pem` and `name.key` into `dir`.
fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) {
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A CA, the core's certificate (127.0.0.1), a host certificate the CA signed and a
/// self-signed "rogue" one.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "modhost test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    write(dir, "ca", &ca_cert, &ca_key);
    let issuer = Issuer::from_params(&ca, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    write(dir, "core", &server, &server_key);
    let host_key = KeyPair::generate().unwrap();
    let host = CertificateParams::new(vec!["host-a".to_string()])
        .unwrap()
        .signed_by(&host_key, &issuer)
        .unwrap();
    write(dir, "host", &host, &host_key);
    let rogue_key = KeyPair::generate().unwrap();
    let rogue = CertificateParams::new(vec!["host-a".to_string()])
        .unwrap()
        .self_signed(&rogue_key)
        .unwrap();
    write(dir, "rogue", &rogue, &rogue_key);
}

fn host(url: &str, certs: &Path, identity: Option<&str>) -> (Modules, HostProcess) {
    let m = Modules::new();
    m.add_example("hello");
    let ca = certs.join("ca.pem").display().to_string();
    let (cert, key) = match identity {
        Some(name) => (
            certs.join(format!("{name}.pem")).display().to_string(),
            certs.join(format!("{name}.key")).display().to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let env = [
        ("MODHOST_CORE_URL", url),
        ("MODHOST_CORE_TLS_CA", ca.as_str()),
        ("MODHOST_CORE_TLS_CERT", cert.as_str()),
        ("MODHOST_CORE_TLS_KEY", key.as_str()),
        ("MODHOST_CORE_TIMEOUT", "2s"),
    ];
    let h = HostProcess::start(&m, &env, &[]);
    (m, h)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mutual_tls_serves_a_host_with_a_signed_certificate_and_refuses_the_others() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let data = tempfile::tempdir().unwrap();
    let file = |name: &str| certs.path().join(name).display().to_string();
    let (cert, key, ca) = (file("core.pem"), file("core.key"), file("ca.pem"));
    let core = CoreProcess::start(
        data.path(),
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        &[],
    );
    let url = format!("https://{}", core.addr("All"));
    let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
        .args(["admin", "token", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let console = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // The host with a certificate the CA signed reaches the core.
    let (_ma, good) = host(&url, certs.path(), Some("host"));
    wait_for("the signed host ready", || {
        good.get("/readyz").status == 200
    });
    let roles = good.request_as(&console, "GET", "/api/v1/authz/roles", b"");
    assert_eq!(roles.status, 200, "{}", roles.text());
    assert!(roles.text().contains("\"admin\""), "{}", roles.text());

    // Without a certificate, or with a self-signed one, the core refuses the host.
    for identity in [None, Some("rogue")] {
        let (_m, refused) = host(&url, certs.path(), identity);
        wait_for("the refused host's /readyz to say so", || {
            let r = refused.get("/readyz");
            r.status == 503 && r.json()["core"] == "unreachable"
        });
        let roles = refused.request_as(&console, "GET", "/api/v1/authz/roles", b"");
        assert_eq!(roles.status, 503, "{identity:?}: {}", roles.text());
        // Public routes do not need the core.
        assert_eq!(refused.get("/api/v1/hello/greet/x").status, 200);
    }
    drop(core);
}

/// An https:// core_url without the CA, or a certificate without its key, is refused
/// at start, naming the setting.
#[test]
fn tls_settings_that_do_not_fit_are_refused_at_start() {
    let m = Modules::new();
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_modhost"))
            .args(["run", "--modules"])
            .arg(m.dir())
            .arg("--data-dir")
            .arg(m.data())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("MODHOST_CORE_URL", "https://127.0.0.1:1")]);
    assert!(err.contains("needs core_tls_ca"), "{err}");
    let err = run(&[
        ("MODHOST_CORE_URL", "https://127.0.0.1:1"),
        ("MODHOST_CORE_TLS_CA", "/nonexistent/ca.pem"),
    ]);
    assert!(err.contains("core_tls_ca /nonexistent/ca.pem"), "{err}");
}
