//! Cluster mode on the real engines: hosts as separate `modhost run` processes on
//! loopback, one `modhost core` (gRPC) for all of them, the modules' data in one
//! PostgreSQL database, and each test's own etcd, nats-server (JetStream) and
//! redis-server processes, so that the fault tests can kill and restart them.
//!
//! - partitioned: blog on host A, billing on B (in a worker process), notifications on
//!   C: a premium post on A asks billing on B, and its event reaches C, all under the
//!   caller's trace id;
//! - replicated: notifications on C and D: 1,000 posts give exactly 1,000 handled
//!   events, none twice, none lost;
//! - faults: a billing host killed with `kill -9` while another runs billing; NATS
//!   stopped for 10 s while posts are created; Redis stopped; etcd restarted empty;
//! - a dependency on another host that is not up yet: waited for, or failed with the
//!   reason and brought back by a reload;
//! - the event cases run on NATS JetStream and, with the `kafka` feature, on Kafka: a
//!   subscriber host taken down mid-stream, retries and dead letters across hosts, a
//!   subscriber hot-reloaded mid-stream.
//!
//! The tests run one at a time (each starts up to nine processes on two cores).

mod common;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{core::CoreProcess, engines, http, pg::PgTestDb, HostProcess, HttpResponse, Modules};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// The event broker a test's cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bus {
    /// NATS JetStream (nats-server).
    JetStream,
    /// Kafka (the noida-db broker); only in builds with the `kafka` feature.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    Kafka,
}

impl Bus {
    fn tool(self) -> &'static str {
        match self {
            Bus::JetStream => "nats-server",
            Bus::Kafka => "noida-db",
        }
    }

    fn start(self) -> engines::Server {
        match self {
            Bus::JetStream => engines::nats(),
            Bus::Kafka => engines::kafka(),
        }
    }

    fn url(self, port: u16) -> String {
        match self {
            Bus::JetStream => format!("nats://127.0.0.1:{port}"),
            Bus::Kafka => format!("kafka://127.0.0.1:{port}"),
        }
    }
}

/// What every test host presents on peer calls.
const SECRET: &str = "test-cluster-secret-0123456789";

/// The lease TTL the test hosts use: a dead host is dropped this long after its death.
const LEASE_TTL: Duration = Duration::from_secs(2);

/// The engines, the core and the database of one test's cluster.
struct Platform {
    name: String,
    etcd: engines::Server,
    bus: Bus,
    /// The event broker's process.
    broker: engines::Server,
    redis: engines::Server,
    core: CoreProcess,
    _core_dir: tempfile::TempDir,
    /// Last: dropped after every host has gone.
    pg: PgTestDb,
}

/// One host of the cluster; the process is dropped (killed) before its folder.
struct Node {
    host: HostProcess,
    _modules: Modules,
}

impl std::ops::Deref for Node {
    type Target = HostProcess;
    fn deref(&self) -> &HostProcess {
        &self.host
    }
}

impl Platform {
    /// Everything up on JetStream, or `None` (with a SKIP line) where an engine is
    /// missing.
    fn start(test: &str) -> Option<Platform> {
        Self::start_on(test, Bus::JetStream)
    }

    /// Everything up, with `bus` as the event broker.
    fn start_on(test: &str, bus: Bus) -> Option<Platform> {
        for tool in ["etcd", "etcdctl", bus.tool(), "redis-server"] {
            if !engines::have(tool, test) {
                return None;
            }
        }
        let pg = PgTestDb::create()?;
        let core_dir = tempfile::tempdir().unwrap();
        let core = CoreProcess::start(
            core_dir.path(),
            &["--grpc-listen", "127.0.0.1:0", "--database-url", &pg.url],
            &[("MODHOST_POSTGRES_ROLE_PREFIX", &pg.prefix)],
        );
        Some(Platform {
            name: format!(
                "t{}",
                &pg.prefix.replace('_', "-").trim_end_matches('-')[3..]
            ),
            etcd: engines::etcd(),
            bus,
            broker: bus.start(),
            redis: engines::redis(),
            core,
            _core_dir: core_dir,
            pg,
        })
    }

    fn env(&self, id: &str) -> Vec<(String, String)> {
        vec![
            ("MODHOST_HOST_ID".into(), id.into()),
            ("MODHOST_CLUSTER_NAME".into(), self.name.clone()),
            (
                "MODHOST_REGISTRY_URL".into(),
                format!("etcd://127.0.0.1:{}", self.etcd.port),
            ),
            (
                "MODHOST_EVENT_BUS_URL".into(),
                self.bus.url(self.broker.port),
            ),
            (
                "MODHOST_CACHE_URL".into(),
                format!("redis://127.0.0.1:{}", self.redis.port),
            ),
            (
                "MODHOST_REGISTRY_LEASE_TTL".into(),
                format!("{}s", LEASE_TTL.as_secs()),
            ),
            (
                "MODHOST_CORE_URL".into(),
                format!("http://{}", self.core.addr("All")),
            ),
            ("MODHOST_DATABASE_URL".into(), self.pg.url.clone()),
            (
                "MODHOST_POSTGRES_ROLE_PREFIX".into(),
                self.pg.prefix.clone(),
            ),
            ("MODHOST_WATCH".into(), "false".into()),
            ("MODHOST_CLUSTER_SECRET".into(), SECRET.into()),
            ("RUST_LOG".into(), "info,modhost::cluster=debug".into()),
        ]
    }

    /// Host `id` running the example `modules`, with `extra` settings.
    fn host(&self, id: &str, modules: &[&str], extra: &[(&str, &str)]) -> Node {
        self.host_of(
            id,
            |m| {
                for name in modules {
                    m.add_example(name);
                }
            },
            extra,
        )
    }

    /// Host `id` running the modules `layout` puts in its folder, with `extra` settings.
    fn host_of(&self, id: &str, layout: impl FnOnce(&Modules), extra: &[(&str, &str)]) -> Node {
        let m = Modules::new();
        layout(&m);
        let mut env = self.env(id);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Node {
            host: HostProcess::start(&m, &env, &[]),
            _modules: m,
        }
    }
}

/// Polls `check` until it gives a value, for up to `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the hosts `node` knows (from `/admin/cluster`).
fn known_hosts(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = node.get("/admin/cluster").json()["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| h["host_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits until `node` knows (at least) the hosts `ids`.
fn wait_for_hosts(node: &Node, ids: &[&str]) {
    wait_for(
        &format!("hosts {ids:?} known"),
        Duration::from_secs(20),
        || {
            let known = known_hosts(node);
            ids.iter()
                .all(|id| known.iter().any(|k| k == id))
                .then_some(())
        },
    );
}

/// A metric's value in `/metrics` (summed over its label sets).
fn metric(node: &Node, name: &str) -> u64 {
    node.get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn notifications(node: &Node) -> Vec<Value> {
    node.get("/api/v1/notifications/notifications")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn post(node: &Node, title: &str, premium: bool, headers: &[(&str, &str)]) -> HttpResponse {
    let auth = format!("Bearer {}", node.token);
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let body = serde_json::json!({ "title": title, "premium": premium }).to_string();
    http(
        node.addr,
        "POST",
        "/api/v1/blog/posts",
        &all,
        body.as_bytes(),
    )
}

fn logs_mention(node: &Node, needle: &str) -> bool {
    node.logs().iter().any(|l| l.to_string().contains(needle))
}

#[test]
fn partitioned_hosts_serve_one_platform_under_one_trace() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start("partitioned_hosts_serve_one_platform_under_one_trace") else {
        return;
    };
    // Billing runs in a worker process on B: a cross-host call reaches an isolated module.
    let b = p.host("host-b", &["billing"], &[("MODHOST_ISOLATION", "process")]);
    let a = p.host("host-a", &["blog"], &[]);
    let c = p.host("host-c", &["notifications"], &[]);
    assert!(b.module("billing")["worker_pid"].as_u64().is_some());
    for node in [&a, &b, &c] {
        wait_for_hosts(node, &["host-a", "host-b", "host-c"]);
    }
    assert_eq!(a.module("blog")["state"], "started");
    assert_eq!(c.module("notifications")["state"], "started");

    // A post on A, under the client's trace: A logs it, C handles its event in it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let created = post(&a, "Secret", true, &[("traceparent", &traceparent)]);
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_i64().unwrap();
    let got = wait_for("the notification on C", Duration::from_secs(20), || {
        let list = notifications(&c);
        list.iter()
            .find(|n| n["message"] == "New post: Secret")
            .cloned()
    });
    assert_eq!(got["topic"], "blog.post.created");
    wait_for(
        "trace id in A's and C's logs",
        Duration::from_secs(5),
        || (logs_mention(&a, trace) && logs_mention(&c, trace)).then_some(()),
    );

    // Reading the premium post on A asks billing on B: 402 without a subscription...
    let read_trace = "0af7651916cd43dd8448eb211c80319c";
    let read_parent = format!("00-{read_trace}-b7ad6b7169203331-01");
    let auth = format!("Bearer {}", a.token);
    let path = format!("/api/v1/blog/posts/{id}");
    let read = |headers: &[(&str, &str)]| {
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http(a.addr, "GET", &path, &all, b"")
    };
    let denied = read(&[("traceparent", &read_parent)]);
    assert_eq!(denied.status, 402, "{}", denied.text());
    let traced = Instant::now() + Duration::from_secs(5);
    while !(logs_mention(&a, read_trace) && logs_mention(&b, read_trace)) {
        assert!(
            Instant::now() < traced,
            "the read's trace id: in A's logs {}, in B's {}; B's last logs: {:?}",
            logs_mention(&a, read_trace),
            logs_mention(&b, read_trace),
            b.logs().iter().rev().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and 200 once the user subscribed on B.
    let sub = b.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"console","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    assert_eq!(read(&[]).status, 200);
    // The subscription event went from B to C.
    wait_for("billing's event on C", Duration::from_secs(20), || {
        notifications(&c)
            .iter()
            .any(|n| n["topic"] == "billing.subscription.created")
            .then_some(())
    });

    // Every host sees every provider; A counts its calls to B's.
    let services = a.get("/admin/services").json();
    let remote = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "billing.subscription.get")
        .unwrap_or_else(|| panic!("{services}"));
    assert_eq!(remote["location"], "host-b");
    assert_eq!(remote["healthy"], true);
    assert!(remote["calls"].as_u64().unwrap() >= 2, "{remote}");
    let cluster = c.get("/admin/cluster").json();
    let b_record = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == "host-b")
        .unwrap();
    assert_eq!(b_record["modules"][0]["name"], "billing");
    assert_eq!(
        b_record["modules"][0]["services"][0],
        "billing.subscription.get"
    );

    // The post A cached is in the shared Redis, under the cluster's and blog's prefix.
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &p.redis.port.to_string(),
            "--scan",
            "--pattern",
            &format!("{}:cache:blog:*", p.name),
        ])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(!keys.trim().is_empty(), "no blog keys in Redis");
}

#[test]
fn replicated_subscribers_handle_each_event_exactly_once() {
    replicated_subscribers(Bus::JetStream);
}

#[cfg(feature = "kafka")]
#[test]
fn replicated_subscribers_handle_each_event_exactly_once_on_kafka() {
    replicated_subscribers(Bus::Kafka);
}

/// 1,000 posts on A; notifications on C and D.
fn replicated_subscribers(bus: Bus) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start_on(&format!("replicated subscribers on {bus:?}"), bus) else {
        return;
    };
    let a = p.host("host-a", &["billing", "blog"], &[]);
    let c = p.host("host-c", &["notifications"], &[]);
    let d = p.host("host-d", &["notifications"], &[]);
    for node in [&a, &c, &d] {
        wait_for_hosts(node, &["host-a", "host-c", "host-d"]);
    }
    const POSTS: usize = 1000;
    for i in 0..POSTS {
        let created = post(&a, &format!("post {i}"), false, &[]);
        assert_eq!(created.status, 201, "post {i}: {}", created.text());
    }
    // Both hosts read the same table (one PostgreSQL schema for the module).
    let list = wait_for("1,000 notifications", Duration::from_secs(120), || {
        let list = notifications(&c);
        (list.len() >= POSTS).then_some(list)
    });
    let mut messages: Vec<&str> = list.iter().filter_map(|n| n["message"].as_str()).collect();
    messages.sort_unstable();
    messages.dedup();
    assert_eq!(messages.len(), POSTS, "every post once");
    assert_eq!(list.len(), POSTS, "no notification twice");
    // Handled once each across the two hosts (a second delivery would count twice).
    // JetStream hands events to both hosts; Kafka gives a topic's one partition to one
    // member of the group.
    let (on_c, on_d) = wait_for("handled counts settle", Duration::from_secs(10), || {
        let (c_n, d_n) = (
            metric(&c, "modhost_events_handled_total"),
            metric(&d, "modhost_events_handled_total"),
        );
        (c_n + d_n >= POSTS as u64).then_some((c_n, d_n))
    });
    eprintln!("{bus:?}: handled on C: {on_c}, on D: {on_d}");
    assert_eq!(on_c + on_d, POSTS as u64, "C {on_c} + D {on_d}");
    if bus == Bus::JetStream {
        assert!(
            on_c > 0 && on_d > 0,
            "C {on_c}, D {on_d}: both hosts take events"
        );
    }
    assert!(a
        .get("/admin/dead-letters")
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_killed_provider_host_is_dropped_when_its_lease_expires() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start("a_killed_provider_host_is_dropped_when_its_lease_expires")
    else {
        return;
    };
    let b = p.host("host-b", &["billing"], &[]);
    let e = p.host("host-e", &["billing"], &[]);
    let a = p.host("host-a", &["blog"], &[]);
    wait_for_hosts(&a, &["host-a", "host-b", "host-e"]);
    let created = post(&a, "Premium", true, &[]);
    let id = created.json()["id"].as_i64().unwrap();
    let sub = b.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"console","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    let path = format!("/api/v1/blog/posts/{id}");
    for _ in 0..10 {
        assert_eq!(a.get(&path).status, 200);
    }
    let calls_before = |host: &str| {
        a.get("/admin/services")
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["location"] == host)
            .map(|s| s["calls"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        calls_before("host-b") > 0 && calls_before("host-e") > 0,
        "round-robin over both"
    );

    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &b.pid().to_string()])
        .status()
        .unwrap();
    // Calls go on while B's lease runs out; count what fails.
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut gone_at = None;
    while killed.elapsed() < LEASE_TTL + Duration::from_secs(4) {
        match a.get(&path).status {
            200 => ok += 1,
            _ => failed += 1,
        }
        if gone_at.is_none() && !known_hosts(&a).contains(&"host-b".to_string()) {
            gone_at = Some(killed.elapsed());
        }
    }
    let gone_at = gone_at.expect("host-b still listed after its lease");
    eprintln!(
        "after kill -9: {ok} calls succeeded, {failed} failed; host-b dropped after {gone_at:?}"
    );
    assert!(
        gone_at <= LEASE_TTL + Duration::from_secs(3),
        "dropped after {gone_at:?}"
    );
    // Once the lease is gone, every call succeeds, on E.
    for i in 0..50 {
        let r = a.get(&path);
        assert_eq!(
            r.status,
            200,
            "call {i} after the lease expired: {}",
            r.text()
        );
    }
    drop(e);
}

#[test]
fn events_published_while_nats_is_down_all_arrive() {
    events_published_while_the_broker_is_down(Bus::JetStream);
}

#[cfg(feature = "kafka")]
#[test]
fn events_published_while_kafka_is_down_all_arrive() {
    events_published_while_the_broker_is_down(Bus::Kafka);
}

/// The broker stopped for 10 s while posts are created on A; notifications on C.
fn events_published_while_the_broker_is_down(bus: Bus) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut p) = Platform::start_on(&format!("broker outage on {bus:?}"), bus) else {
        return;
    };
    let a = p.host("host-a", &["billing", "blog"], &[]);
    let c = p.host("host-c", &["notifications"], &[]);
    wait_for_hosts(&a, &["host-a", "host-c"]);
    assert_eq!(post(&a, "before", false, &[]).status, 201);
    wait_for("the first notification", Duration::from_secs(20), || {
        (notifications(&c).len() == 1).then_some(())
    });

    p.broker.stop();
    let stopped = Instant::now();
    let mut during = 0;
    while stopped.elapsed() < Duration::from_secs(10) {
        let r = post(&a, &format!("during {during}"), false, &[]);
        assert_eq!(
            r.status,
            201,
            "publishing while {bus:?} is down: {}",
            r.text()
        );
        during += 1;
        // Paces the posts over the 10 s outage (the outage's length is the scenario).
        std::thread::sleep(Duration::from_millis(50));
    }
    let waiting = metric(&a, "modhost_event_outbox_waiting");
    assert!(
        waiting > 0,
        "events wait in the outbox while {bus:?} is down"
    );
    p.broker.start();
    let want = 1 + during;
    let list = wait_for(
        "every event after the broker is back",
        Duration::from_secs(90),
        || {
            let list = notifications(&c);
            (list.len() >= want).then_some(list)
        },
    );
    assert_eq!(list.len(), want, "none twice");
    // In publish order.
    let during_order: Vec<String> = list[1..]
        .iter()
        .map(|n| n["message"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = (0..during)
        .map(|i| format!("New post: during {i}"))
        .collect();
    assert_eq!(during_order, expected);
    wait_for("the outbox empties", Duration::from_secs(10), || {
        (metric(&a, "modhost_event_outbox_waiting") == 0).then_some(())
    });
    assert!(metric(&a, "modhost_event_outbox_queued_total") >= waiting);
    eprintln!(
        "{bus:?}: {during} posts while the broker was down; {waiting} events waited in the outbox"
    );
}

#[test]
fn requests_succeed_without_redis_and_hosts_reregister_after_etcd_restarts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut p) =
        Platform::start("requests_succeed_without_redis_and_hosts_reregister_after_etcd_restarts")
    else {
        return;
    };
    let b = p.host("host-b", &["billing"], &[]);
    let a = p.host("host-a", &["blog"], &[]);
    wait_for_hosts(&a, &["host-a", "host-b"]);
    let created = post(&a, "Cached", false, &[]);
    let path = format!("/api/v1/blog/posts/{}", created.json()["id"]);
    assert_eq!(a.get(&path).status, 200);

    // Redis gone: reads and writes still answer, as misses, counted.
    p.redis.stop();
    for i in 0..20 {
        assert_eq!(a.get(&path).status, 200, "read {i} without Redis");
    }
    assert_eq!(post(&a, "No cache", false, &[]).status, 201);
    assert!(metric(&a, "modhost_cache_errors_total") > 0);
    p.redis.start();
    wait_for("the cache answers again", Duration::from_secs(10), || {
        let before = metric(&a, "modhost_cache_errors_total");
        (a.get(&path).status == 200 && metric(&a, "modhost_cache_errors_total") == before)
            .then_some(())
    });

    // etcd restarted with nothing: both hosts register again by themselves.
    p.etcd.restart_empty();
    let keys = || {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints=127.0.0.1:{}", p.etcd.port),
                "get",
                "--prefix",
                "--keys-only",
                &format!("{}/hosts/", p.name),
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut keys: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        Some(keys)
    };
    let want = vec![
        format!("{}/hosts/host-a", p.name),
        format!("{}/hosts/host-b", p.name),
    ];
    wait_for(
        "both hosts in the new etcd",
        Duration::from_secs(20),
        || (keys()? == want).then_some(()),
    );
    wait_for_hosts(&a, &["host-a", "host-b"]);
    let sub = b.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"console","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201);
    let premium = post(&a, "After etcd", true, &[]);
    let premium = format!("/api/v1/blog/posts/{}", premium.json()["id"]);
    assert_eq!(a.get(&premium).status, 200, "A calls B again");
}

#[test]
fn a_dependency_on_another_host_is_waited_for_or_fails_with_the_reason() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) =
        Platform::start("a_dependency_on_another_host_is_waited_for_or_fails_with_the_reason")
    else {
        return;
    };
    // Billing runs nowhere: blog waits one second, then fails, saying why.
    let a = p.host("host-a", &["blog"], &[("MODHOST_DEPENDENCY_WAIT", "1s")]);
    let blog = a.module("blog");
    assert_eq!(blog["state"], "failed", "{blog}");
    let reason = blog["reason"].as_str().unwrap();
    assert!(
        reason.contains("dependency `billing`") && reason.contains("runs on no host"),
        "{reason}"
    );

    // Notifications on C needs blog and billing, neither running yet: C waits, and
    // starts it once billing is up on B and blog is reloaded on A.
    std::thread::scope(|s| {
        let starting = s.spawn(|| {
            p.host(
                "host-c",
                &["notifications"],
                &[("MODHOST_DEPENDENCY_WAIT", "60s")],
            )
        });
        let b = p.host("host-b", &["billing"], &[]);
        wait_for(
            "billing started on B, as A sees it",
            Duration::from_secs(20),
            || {
                let cluster = a.get("/admin/cluster").json();
                cluster["hosts"]
                    .as_array()?
                    .iter()
                    .any(|h| h["host_id"] == "host-b" && h["modules"][0]["state"] == "started")
                    .then_some(())
            },
        );
        let reloaded = a.request("POST", "/admin/modules/blog/reload", b"");
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        assert_eq!(a.module("blog")["state"], "started");
        let c = starting.join().expect("host C starts");
        assert_eq!(c.module("notifications")["state"], "started");
        assert!(logs_mention(
            &c,
            "waiting up to 60s for a dependency on another host"
        ));
        assert_eq!(post(&a, "Works", false, &[]).status, 201);
        wait_for("the notification on C", Duration::from_secs(20), || {
            (!notifications(&c).is_empty()).then_some(())
        });
        drop(b);
    });
}

#[test]
fn peer_calls_need_the_cluster_secret_and_open_listeners_need_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start("peer_calls_need_the_cluster_secret_and_open_listeners_need_one")
    else {
        return;
    };
    let b = p.host("host-b", &["billing"], &[]);
    // A host with the wrong secret finds billing in the registry, but B refuses it.
    let x = p.host(
        "host-x",
        &["blog"],
        &[("MODHOST_CLUSTER_SECRET", "not-the-cluster-secret-at-all")],
    );
    wait_for_hosts(&x, &["host-b", "host-x"]);
    let created = post(&x, "Premium", true, &[]);
    let path = format!("/api/v1/blog/posts/{}", created.json()["id"]);
    let refused = x.get(&path);
    assert!(
        refused.status >= 500,
        "{} {}",
        refused.status,
        refused.text()
    );
    wait_for("B logs the refusal", Duration::from_secs(5), || {
        logs_mention(&b, "refused a peer call without the cluster secret").then_some(())
    });

    // A peer server open to other machines without a secret is refused at start.
    let m = Modules::new();
    let mut env = p.env("host-open");
    env.retain(|(k, _)| k != "MODHOST_CLUSTER_SECRET");
    env.push(("MODHOST_CLUSTER_LISTEN".into(), "0.0.0.0:0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let exited = HostProcess::run_to_exit(&m, &env, &[], Duration::from_secs(60));
    assert_ne!(exited.code, Some(0));
    assert!(
        exited.stderr.contains("cluster_secret") && exited.stderr.contains("0.0.0.0"),
        "{}",
        exited.stderr
    );
}

#[test]
fn a_consumer_host_killed_mid_stream_loses_nothing() {
    consumer_host_killed_mid_stream(Bus::JetStream);
}

/// On Kafka the victim is stopped with SIGTERM: its consumer leaves the group and the
/// partition moves at once. A `kill -9` leaves it with the dead member on the test
/// broker: noida-db 0.2.3 does not expire a member whose session timed out (measured:
/// nothing moved in 120 s, with `session.timeout.ms` = 6 s and `max.poll.interval.ms` =
/// 22 s). A Kafka broker moves it after `session.timeout.ms`; docs/scale-out.md says so.
#[cfg(feature = "kafka")]
#[test]
fn a_consumer_host_stopped_mid_stream_loses_nothing_on_kafka() {
    consumer_host_killed_mid_stream(Bus::Kafka);
}

/// 300 posts; the notifications host handling them is killed mid-stream (`kill -9`;
/// SIGTERM on Kafka, see above); the other host takes over. Nothing is lost,
/// duplicates (at least once) are counted from each host's log, and the stored
/// notifications are deduplicated by event id.
fn consumer_host_killed_mid_stream(bus: Bus) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start_on(&format!("consumer killed on {bus:?}"), bus) else {
        return;
    };
    let a = p.host("host-a", &["billing", "blog"], &[]);
    let c = p.host("host-c", &["notifications"], &[]);
    let d = p.host("host-d", &["notifications"], &[]);
    for node in [&a, &c, &d] {
        wait_for_hosts(node, &["host-a", "host-c", "host-d"]);
    }
    // Which host is taking events: the one to kill.
    assert_eq!(post(&a, "warm-up", false, &[]).status, 201);
    let (victim, survivor) = wait_for(
        "the first event handled",
        Duration::from_secs(30),
        || match (
            metric(&c, "modhost_events_handled_total"),
            metric(&d, "modhost_events_handled_total"),
        ) {
            (0, 0) => None,
            (_, 0) => Some((&c, &d)),
            _ => Some((&d, &c)),
        },
    );
    // Posts keep coming; the victim is killed once it has handled 20 of them, while
    // the rest are still being published.
    let signal = match bus {
        Bus::JetStream => "-9",
        Bus::Kafka => "-TERM",
    };
    const POSTS: usize = 300;
    let mut killed = false;
    for i in 0..POSTS {
        assert_eq!(post(&a, &format!("stream {i}"), false, &[]).status, 201);
        if !killed && metric(victim, "modhost_events_handled_total") > 20 {
            std::process::Command::new("kill")
                .args([signal, &victim.pid().to_string()])
                .status()
                .unwrap();
            killed = true;
        }
    }
    assert!(
        killed,
        "the victim handled too few events to be killed mid-stream"
    );
    let total = POSTS + 1;
    let until = Instant::now() + Duration::from_secs(120);
    let list = loop {
        let list = notifications(survivor);
        if list.len() >= total {
            break list;
        }
        if Instant::now() > until {
            let tail: Vec<String> = survivor
                .logs()
                .iter()
                .rev()
                .take(15)
                .map(|l| l.to_string())
                .collect();
            panic!(
                "{bus:?}: {} of {total} events stored 120 s after the kill; the survivor's last logs:\n{}",
                list.len(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut ids: Vec<&str> = list.iter().filter_map(|n| n["event_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "every event stored once");
    assert_eq!(list.len(), total, "no event stored twice");
    // Who handled what, from each host's own log ("event handled", with the event id):
    // the victim's lines up to its death, the survivor's all.
    let handled = |node: &Node| -> Vec<String> {
        node.logs()
            .iter()
            .filter(|l| l["message"] == "event handled")
            .filter_map(|l| l["span"]["event"].as_str().map(str::to_string))
            .collect()
    };
    let survivor_ids = wait_for("the survivor's log", Duration::from_secs(10), || {
        let ids = handled(survivor);
        (ids.len() + handled(victim).len() >= total).then_some(ids)
    });
    let victim_ids = handled(victim);
    let mut all: Vec<&String> = victim_ids.iter().chain(survivor_ids.iter()).collect();
    let handlings = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "every event handled (victim ∪ survivor)");
    assert!(
        !survivor_ids.is_empty() && victim_ids.len() < total,
        "the survivor took over mid-stream (victim {}, survivor {})",
        victim_ids.len(),
        survivor_ids.len()
    );
    let duplicates = handlings - total;
    eprintln!(
        "{bus:?}: the victim handled {} events before kill {signal}, the survivor {}; {duplicates} handled twice (at least once), all stored once (deduplicated by event id)",
        victim_ids.len(),
        survivor_ids.len()
    );
}

#[test]
fn failing_handlers_are_retried_then_dead_lettered_across_hosts() {
    failing_handlers_across_hosts(Bus::JetStream);
}

#[cfg(feature = "kafka")]
#[test]
fn failing_handlers_are_retried_then_dead_lettered_across_hosts_on_kafka() {
    failing_handlers_across_hosts(Bus::Kafka);
}

/// Test modules (the `faulty` plugin): `pub` and `broken` (always fails) on A, `flaky`
/// (fails its first attempt, subscribed with a wildcard) on B. The broken subscription's
/// event becomes a dead letter, shown on both hosts and audited once; flaky gets it on
/// its second attempt.
fn failing_handlers_across_hosts(bus: Bus) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start_on(&format!("dead letters on {bus:?}"), bus) else {
        return;
    };
    let retries = [
        ("MODHOST_EVENT_MAX_RETRIES", "2"),
        ("MODHOST_EVENT_RETRY_BACKOFF", "20ms"),
    ];
    let configure = |m: &Modules, module: &str, lines: &str| {
        let path = m.dir().join(module).join("module.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{lines}")).unwrap();
    };
    let a = p.host_of(
        "host-a",
        |m| {
            m.add_faulty("pub", "ok", "events:\n  publishes: [pub.item.created]\n");
            m.add_faulty(
                "broken",
                "ok",
                "events:\n  subscribes: [pub.item.created]\n",
            );
            configure(
                m,
                "broken",
                "  subscribe: [\"pub.item.created\"]\n  fail_always: true\n",
            );
        },
        &retries,
    );
    let b = p.host_of(
        "host-b",
        |m| {
            m.add_faulty("flaky", "ok", "events:\n  subscribes: [pub.item.*]\n");
            configure(
                m,
                "flaky",
                "  subscribe: [\"pub.item.*\"]\n  fail_first: 1\n",
            );
        },
        &retries,
    );
    wait_for_hosts(&a, &["host-a", "host-b"]);
    let body = serde_json::json!({ "topic": "pub.item.created", "count": 1, "payload": "x" });
    let published = a.request("POST", "/api/v1/pub/publish", body.to_string().as_bytes());
    assert_eq!(published.status, 200, "{}", published.text());

    // The wildcard subscription on B got it, on its second attempt.
    let flaky = wait_for("flaky's event on B", Duration::from_secs(30), || {
        let got = b.get("/api/v1/flaky/events").json();
        got.as_array().filter(|l| !l.is_empty()).cloned()
    });
    assert_eq!(flaky.len(), 1, "{flaky:?}");
    assert_eq!(flaky[0]["attempt"], 2, "delivered on the second attempt");
    assert_eq!(flaky[0]["topic"], "pub.item.created");

    // The broken one's is a dead letter, on both hosts.
    for node in [&a, &b] {
        let dead = wait_for("the dead letter", Duration::from_secs(30), || {
            let dead = node.get("/admin/dead-letters").json();
            dead.as_array().filter(|l| !l.is_empty()).cloned()
        });
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["module"], "broken");
        assert_eq!(dead[0]["attempts"], 3);
        assert!(
            dead[0]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("configured to fail attempt 3"),
            "{dead:?}"
        );
    }
    // Audited once, in the shared core.
    let audit = wait_for(
        "the dead-letter audit entry",
        Duration::from_secs(10),
        || {
            let audit = a.get("/api/v1/audit?action=event.dead_letter").json();
            audit.as_array().filter(|l| !l.is_empty()).cloned()
        },
    );
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["module"], "broken");
}

#[test]
fn a_subscriber_reloaded_mid_stream_loses_nothing() {
    subscriber_reloaded_mid_stream(Bus::JetStream);
}

#[cfg(feature = "kafka")]
#[test]
fn a_subscriber_reloaded_mid_stream_loses_nothing_on_kafka() {
    subscriber_reloaded_mid_stream(Bus::Kafka);
}

/// Hot reload of the subscribing module while events keep coming: the new instance's
/// subscription takes over from the old one's on the same durable consumer (JetStream)
/// or group (Kafka); every event is stored once.
fn subscriber_reloaded_mid_stream(bus: Bus) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = Platform::start_on(&format!("reload on {bus:?}"), bus) else {
        return;
    };
    let a = p.host("host-a", &["billing", "blog"], &[]);
    let c = p.host("host-c", &["notifications"], &[]);
    wait_for_hosts(&a, &["host-a", "host-c"]);
    const POSTS: usize = 200;
    for i in 0..POSTS {
        assert_eq!(post(&a, &format!("reload {i}"), false, &[]).status, 201);
        if i == POSTS / 2 {
            let reloaded = c.request("POST", "/admin/modules/notifications/reload", b"");
            assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        }
    }
    let list = wait_for(
        "every event after the reload",
        Duration::from_secs(60),
        || {
            let list = notifications(&c);
            (list.len() >= POSTS).then_some(list)
        },
    );
    let mut ids: Vec<&str> = list.iter().filter_map(|n| n["event_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), POSTS, "every event stored once");
    assert_eq!(list.len(), POSTS, "none twice");
    assert_eq!(c.module("notifications")["state"], "started");
}
