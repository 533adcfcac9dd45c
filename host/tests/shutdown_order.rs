//! The shutdown order follows the dependencies as they are now: a dependency removed
//! and added back while the host runs is still stopped after the modules that need it.

mod common;

use std::time::{Duration, Instant};

use common::{HostProcess, Modules};

fn wait_for_state(host: &HostProcess, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.module(name)["state"] != state {
        assert!(
            Instant::now() < deadline,
            "{name} never became {state}: {}",
            host.module(name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dependency_removed_and_added_back_still_stops_after_its_dependents() {
    let modules = Modules::new();
    modules.add_example("billing");
    modules.add_example("blog");
    let host = HostProcess::start(&modules, &[("MODHOST_WATCH", "true")], &[]);
    wait_for_state(&host, "blog", "started");

    // billing leaves the modules directory (blog stops with it), then comes back.
    let away = modules.tmp.path().join("billing-away");
    std::fs::rename(modules.dir().join("billing"), &away).expect("move billing out");
    wait_for_state(&host, "blog", "stopped");
    std::fs::rename(&away, modules.dir().join("billing")).expect("move billing back");
    wait_for_state(&host, "billing", "started");
    wait_for_state(&host, "blog", "started");
    let order = |name: &str| host.module(name)["load_order"].as_u64();
    assert!(
        order("billing") < order("blog"),
        "billing must load before blog: billing {:?}, blog {:?}",
        order("billing"),
        order("blog")
    );

    let (code, logs) = host.terminate();
    assert_eq!(code, Some(0));
    let stopped: Vec<&str> = logs
        .iter()
        .filter(|v| v["message"] == "module stopped")
        .filter_map(|v| v["module"].as_str())
        .collect();
    let position = |name: &str| stopped.iter().rposition(|m| *m == name);
    assert!(
        position("blog") < position("billing"),
        "at shutdown blog must stop before billing: {stopped:?}"
    );
}
