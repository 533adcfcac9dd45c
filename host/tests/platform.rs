//! Event bus, cache and module-to-module service calls, through real modules and HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{HostProcess, Mode, Modules};
use serde_json::{json, Value};

fn events_of(host: &HostProcess, module: &str) -> Vec<Value> {
    host.get(&format!("/api/v1/{module}/events"))
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until `module` has received `n` events (or panics after `limit`).
fn wait_for(host: &HostProcess, module: &str, n: usize, limit: Duration) -> Vec<Value> {
    let until = Instant::now() + limit;
    loop {
        let got = events_of(host, module);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < until,
            "{module} received {} of {n} events: {got:?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish(host: &HostProcess, module: &str, topic: &str, count: u32) -> Value {
    let r = host.request(
        "POST",
        &format!("/api/v1/{module}/publish"),
        json!({ "topic": topic, "count": count, "payload": "x" })
            .to_string()
            .as_bytes(),
    );
    r.json()
}

const PUB: &str = "events:\n  publishes: [pub.item.created, pub.item.deleted]\n";

fn every_subscriber_gets_every_event_in_order(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("pub", "ok", PUB);
    m.add_faulty(
        "sub_a",
        "ok",
        "events:\n  subscribes: [pub.item.*]\nconfig_extra: 1\n"
            .replace("config_extra: 1\n", "")
            .as_str(),
    );
    m.add_faulty("sub_b", "ok", "events:\n  subscribes: [pub.>]\n");
    m.add_faulty("sub_c", "ok", "events:\n  subscribes: [pub.item.deleted]\n");
    // Subscriptions are set from config.
    for (name, pattern) in [
        ("sub_a", "pub.item.*"),
        ("sub_b", "pub.>"),
        ("sub_c", "pub.item.deleted"),
    ] {
        let path = m.dir().join(name).join("module.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}  subscribe: [\"{pattern}\"]\n")).unwrap();
    }
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    assert_eq!(
        publish(&host, "pub", "pub.item.created", 50)["published"],
        50
    );
    assert_eq!(publish(&host, "pub", "pub.item.deleted", 1)["published"], 1);
    for module in ["sub_a", "sub_b"] {
        let got = wait_for(&host, module, 51, Duration::from_secs(10));
        let created: Vec<i64> = got
            .iter()
            .filter(|e| e["topic"] == "pub.item.created")
            .map(|e| e["payload"]["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            created,
            (0..50).collect::<Vec<_>>(),
            "{module}: in publish order"
        );
        assert_eq!(got[0]["source"], "pub");
    }
    let c = wait_for(&host, "sub_c", 1, Duration::from_secs(5));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["topic"], "pub.item.deleted");
}

fn publishing_or_subscribing_outside_the_manifest_is_refused(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("pub", "ok", PUB);
    m.add_faulty("rogue", "ok", "events:\n  subscribes: [pub.item.created]\n");
    let path = m.dir().join("rogue/module.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}  subscribe: [\"pub.item.deleted\"]\n"),
    )
    .unwrap();
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let r = publish(&host, "pub", "pub.other.thing", 1);
    assert_eq!(r["kind"], "NotAllowed", "{r}");
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("does not declare under events.publishes"));
    let modules = host.get("/admin/modules").json();
    let rogue = modules
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "rogue")
        .unwrap()
        .clone();
    assert_eq!(rogue["state"], "failed");
    assert!(
        rogue["reason"]
            .as_str()
            .unwrap()
            .contains("subscribes to `pub.item.deleted`, which its module.yaml does not declare"),
        "{rogue}"
    );
}

fn with_config(m: &Modules, module: &str, lines: &str) {
    let path = m.dir().join(module).join("module.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{lines}")).unwrap();
}

fn a_slow_subscriber_does_not_block_publishers_or_others(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("pub", "ok", PUB);
    m.add_faulty("slow", "ok", "events:\n  subscribes: [pub.item.created]\n");
    with_config(
        &m,
        "slow",
        "  subscribe: [\"pub.item.created\"]\n  slow_ms: 400\n",
    );
    m.add_faulty("fast", "ok", "events:\n  subscribes: [pub.item.created]\n");
    with_config(&m, "fast", "  subscribe: [\"pub.item.created\"]\n");
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let started = Instant::now();
    assert_eq!(
        publish(&host, "pub", "pub.item.created", 10)["published"],
        10
    );
    let publish_took = started.elapsed();
    wait_for(&host, "fast", 10, Duration::from_secs(5));
    let slow_done = events_of(&host, "slow").len();
    assert!(slow_done < 10, "the slow subscriber ({slow_done} done) must still be working while the fast one has all 10");
    assert!(
        publish_took < Duration::from_millis(4000),
        "publishing did not wait for the slow subscriber ({publish_took:?})"
    );
    wait_for(&host, "slow", 10, Duration::from_secs(15));
}

fn failing_handlers_are_retried_then_dead_lettered(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("pub", "ok", PUB);
    m.add_faulty("flaky", "ok", "events:\n  subscribes: [pub.item.created]\n");
    with_config(
        &m,
        "flaky",
        "  subscribe: [\"pub.item.created\"]\n  fail_first: 2\n",
    );
    m.add_faulty(
        "broken",
        "ok",
        "events:\n  subscribes: [pub.item.created]\n",
    );
    with_config(
        &m,
        "broken",
        "  subscribe: [\"pub.item.created\"]\n  fail_always: true\n",
    );
    let host = HostProcess::start(
        &m,
        &[
            ("MODHOST_EVENT_MAX_RETRIES", "3"),
            ("MODHOST_EVENT_RETRY_BACKOFF", "20ms"),
            mode.env(),
        ],
        &[],
    );
    publish(&host, "pub", "pub.item.created", 1);
    let flaky = wait_for(&host, "flaky", 1, Duration::from_secs(5));
    assert_eq!(flaky[0]["attempt"], 3, "delivered on the third attempt");
    let until = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        let dead = host.get("/admin/dead-letters").json();
        if !dead.as_array().unwrap().is_empty() || Instant::now() > until {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["module"], "broken");
    assert_eq!(dead[0]["attempts"], 4);
    assert!(dead[0]["error"]
        .as_str()
        .unwrap()
        .contains("configured to fail attempt 4"));
    assert!(events_of(&host, "broken").is_empty());
    // ... and it is in the audit log (written after the dead letter: wait for it).
    let until = Instant::now() + Duration::from_secs(5);
    let audit = loop {
        let audit = host.get("/api/v1/audit?action=event.dead_letter").json();
        if !audit.as_array().unwrap().is_empty() {
            break audit;
        }
        assert!(
            Instant::now() < until,
            "no event.dead_letter audit entry after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["module"], "broken", "{audit}");
}

fn cache_is_namespaced_per_module_and_expires(mode: Mode) {
    let m = Modules::new();
    m.add_faulty("one", "ok", "");
    m.add_faulty("two", "ok", "");
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    assert_eq!(
        host.request("PUT", "/api/v1/one/cache/shared", b"from one")
            .status,
        204
    );
    assert_eq!(host.get("/api/v1/one/cache/shared").text(), "from one");
    assert_eq!(
        host.get("/api/v1/two/cache/shared").status,
        404,
        "two cannot read one's key"
    );
    assert_eq!(
        host.request("PUT", "/api/v1/two/cache/shared", b"from two")
            .status,
        204
    );
    assert_eq!(
        host.get("/api/v1/one/cache/shared").text(),
        "from one",
        "nor overwrite it"
    );
    assert_eq!(
        host.request("DELETE", "/api/v1/two/cache/shared", b"")
            .status,
        204
    );
    assert_eq!(
        host.get("/api/v1/one/cache/shared").text(),
        "from one",
        "nor delete it"
    );

    // A 150 ms TTL: there at first, gone once it has passed (and not before), well
    // before the default TTL (5 min).
    let set_at = Instant::now();
    assert_eq!(
        host.request("PUT", "/api/v1/one/cache/brief?ttl_ms=150", b"soon gone")
            .status,
        204
    );
    let first = host.get("/api/v1/one/cache/brief");
    if first.status == 200 {
        assert_eq!(first.text(), "soon gone");
    } else {
        assert!(
            set_at.elapsed() >= Duration::from_millis(150),
            "gone before its TTL: {} {}",
            first.status,
            first.text()
        );
    }
    let until = set_at + Duration::from_secs(5);
    loop {
        let r = host.get("/api/v1/one/cache/brief");
        if r.status == 404 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < until, "not expired 5 s after a 150 ms TTL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        set_at.elapsed() >= Duration::from_millis(150),
        "expired after {:?}, before its 150 ms TTL",
        set_at.elapsed()
    );
    assert_eq!(
        host.get("/api/v1/one/cache/shared").text(),
        "from one",
        "an entry without a TTL stays"
    );
}

fn service_calls_success_timeout_undeclared_not_a_dependency_and_provider_down(mode: Mode) {
    let m = Modules::new();
    m.add_faulty(
        "provider",
        "ok",
        "services: [provider.echo.call, provider.slow.call]\n",
    );
    with_config(&m, "provider", "  provide: [provider.echo.call]\n");
    m.add_faulty("sleepy", "ok", "services: [sleepy.slow.call]\n");
    with_config(
        &m,
        "sleepy",
        "  provide: [sleepy.slow.call]\n  service_delay_ms: 1500\n",
    );
    m.add_faulty("downed", "init_error", "services: [downed.echo.call]\n");
    m.add_faulty(
        "caller",
        "ok",
        "dependencies:\n  provider: \"1\"\n  sleepy: \"1\"\n  downed: { version: \"1\", optional: true }\n",
    );
    m.add_faulty("stranger", "ok", "");
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let call = |from: &str, service: &str, timeout_ms: u64| {
        host.request(
            "POST",
            &format!("/api/v1/{from}/call"),
            json!({ "service": service, "request": { "n": 7 }, "timeout_ms": timeout_ms })
                .to_string()
                .as_bytes(),
        )
    };
    let ok = call("caller", "provider.echo.call", 2000);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json(), json!({ "echo": { "n": 7 }, "caller": "caller" }));

    let slow = call("caller", "sleepy.slow.call", 200).json();
    assert_eq!(slow["kind"], "Timeout", "{slow}");

    let undeclared = call("caller", "provider.nope.call", 2000).json();
    assert_eq!(undeclared["kind"], "NotAllowed", "{undeclared}");
    assert!(undeclared["error"]
        .as_str()
        .unwrap()
        .contains("no module declares the service `provider.nope.call`"));

    let stranger = call("stranger", "provider.echo.call", 2000).json();
    assert_eq!(stranger["kind"], "NotAllowed", "{stranger}");
    assert!(stranger["error"]
        .as_str()
        .unwrap()
        .contains("does not list its provider `provider` among its dependencies"));

    let down = call("caller", "downed.echo.call", 2000).json();
    assert_eq!(down["kind"], "Unavailable", "{down}");
    assert!(down["error"].as_str().unwrap().contains("is not running"));

    // Declared but not provided in init: also unavailable.
    let unprovided = call("caller", "provider.slow.call", 2000).json();
    assert_eq!(unprovided["kind"], "Unavailable", "{unprovided}");

    let services = host.get("/admin/services").json();
    let echo = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "provider.echo.call")
        .unwrap()
        .clone();
    assert_eq!(echo["provider"], "provider");
    assert_eq!(echo["healthy"], true);
    assert_eq!(echo["calls"], 1);
    let sleepy = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "sleepy.slow.call")
        .unwrap()
        .clone();
    assert_eq!(sleepy["errors"], 1);
}

fn creating_a_post_notifies_and_premium_posts_ask_billing(mode: Mode) {
    let m = Modules::new();
    for name in ["hello", "billing", "blog", "notifications"] {
        m.add_example(name);
    }
    let host = HostProcess::start(&m, &[mode.env()], &[]);
    let created = host.request("POST", "/api/v1/blog/posts", br#"{"title":"Events work"}"#);
    assert_eq!(created.status, 201, "{}", created.text());
    let until = Instant::now() + Duration::from_secs(5);
    let list = loop {
        let list = host.get("/api/v1/notifications/notifications").json();
        if !list.as_array().unwrap().is_empty() || Instant::now() > until {
            break list;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(list[0]["topic"], "blog.post.created", "{list}");
    assert_eq!(list[0]["message"], "New post: Events work");

    // A premium post: the console user has no subscription, so 402; after subscribing, 200.
    let premium = host
        .request(
            "POST",
            "/api/v1/blog/posts",
            br#"{"title":"Secret","premium":true}"#,
        )
        .json();
    let id = premium["id"].as_i64().unwrap();
    let denied = host.get(&format!("/api/v1/blog/posts/{id}"));
    assert_eq!(denied.status, 402, "{}", denied.text());
    let sub = host.request(
        "POST",
        "/api/v1/billing/subscriptions",
        br#"{"user_id":"console","plan":"pro"}"#,
    );
    assert_eq!(sub.status, 201, "{}", sub.text());
    assert_eq!(host.get(&format!("/api/v1/blog/posts/{id}")).status, 200);
    // The subscription event reached notifications too.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let list = host.get("/api/v1/notifications/notifications").json();
        if list
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["topic"] == "billing.subscription.created")
        {
            break;
        }
        assert!(Instant::now() < until, "{list}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cached reads see updates (the cache entry is dropped on update).
    let first = host.get("/api/v1/blog/posts/1").json();
    assert_eq!(first["title"], "Events work");
    host.request("PUT", "/api/v1/blog/posts/1", br#"{"title":"Edited"}"#);
    assert_eq!(host.get("/api/v1/blog/posts/1").json()["title"], "Edited");
}

in_both_modes!(
    every_subscriber_gets_every_event_in_order,
    publishing_or_subscribing_outside_the_manifest_is_refused,
    a_slow_subscriber_does_not_block_publishers_or_others,
    failing_handlers_are_retried_then_dead_lettered,
    cache_is_namespaced_per_module_and_expires,
    service_calls_success_timeout_undeclared_not_a_dependency_and_provider_down,
    creating_a_post_notifies_and_premium_posts_ask_billing,
);
