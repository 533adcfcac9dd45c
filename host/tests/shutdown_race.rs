//! Shutdown and live changes are serialised: a module removed while the host is
//! stopping its modules neither breaks the stop sequence nor leaves a module running.
//! Runs the host in process (`Host::boot`) so the test can start a removal at a chosen
//! moment of the shutdown.

mod common;

use std::{sync::Arc, time::Duration};

use common::Modules;
use modhost::{config::HostConfig, Host};

fn faulty(modules: &Modules, name: &str, stop_delay_ms: u64) -> std::path::PathBuf {
    let manifest = format!(
        "name: {name}\nversion: 1.0.0\npermissions: [{name}.probe.read, {name}.probe.write]\nconfig:\n  mode: ok\n  stop_delay_ms: {stop_delay_ms}\n"
    );
    modules.add(name, "faulty", &manifest)
}

fn state_of(host: &Host, name: &str) -> String {
    host.report()
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.state.to_string())
        .unwrap_or_else(|| "absent".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_during_shutdown_waits_and_every_module_stops() {
    let modules = Modules::new();
    let first = faulty(&modules, "alpha", 0);
    faulty(&modules, "beta", 0);
    // The last in load order stops first, slowly: the removal arrives meanwhile.
    faulty(&modules, "gamma", 1500);
    let config = HostConfig {
        modules_dir: modules.dir(),
        data_dir: modules.data(),
        ..HostConfig::default()
    };
    let host: Arc<Host> = Host::boot(config).await.expect("host boots");
    for name in ["alpha", "beta", "gamma"] {
        assert_eq!(state_of(&host, name), "started", "{name}");
    }

    let stopping = tokio::spawn({
        let host = host.clone();
        async move { host.stop_all().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state_of(&host, "gamma") != "stopping" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gamma never began stopping"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The folder of the first module goes away while shutdown is under way.
    let removal = tokio::spawn({
        let host = host.clone();
        async move { host.remove_module(&first).await }
    });

    let stopped = tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown finished")
        .expect("shutdown did not panic");
    tokio::time::timeout(Duration::from_secs(30), removal)
        .await
        .expect("removal finished")
        .expect("removal did not panic");
    assert_eq!(stopped, ["gamma", "beta", "alpha"]);
    for name in ["alpha", "beta", "gamma"] {
        assert_eq!(state_of(&host, name), "stopped", "{name}");
    }
}
