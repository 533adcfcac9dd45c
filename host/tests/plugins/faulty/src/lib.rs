//! Test-only module. Its manifest's `config.mode` picks how it misbehaves, so one
//! library serves every fault test:
//!
//! - `ok` (default): `GET /api/v1/<name>/ok`, plus `GET .../boom` that panics and
//!   `GET .../hang` that never answers
//! - `init_error`, `init_panic`, `init_hang`, `start_error`
//! - `bad_route` (out of namespace, error ignored), `conflict` (same route twice),
//!   `undeclared_permission` (a route naming a permission module.yaml lacks)
//!
//! `GET .../crash/{how}` ends the process that runs it: `segfault` (a null write),
//! `abort`, `stack` (unbounded recursion), `alloc` (allocation without bound) or `spin`
//! (a loop that never yields). `GET .../fs?path=P` reads a file and answers its size
//! or the error, and `GET .../signal?pid=N` runs `kill -0 N` and answers whether it
//! was allowed (sandbox tests).
//!
//! `GET .../framing` answers with framing headers a module must not set.
//! `config.stop_delay_ms` makes `stop` take that long (shutdown and reload races).
//!
//! Also `POST .../sql` runs the SQL in the body on the module's database (isolation
//! tests), `POST .../tx` exercises transactions, `POST .../echo` returns the body,
//! `GET .../slow?ms=N` answers after N ms and `GET .../slow/running` counts the `/slow`
//! handlers running right now.
//!

use modhost_plugin_api::prelude::*;
use serde_json::json;

#[derive(Default)]
pub struct Faulty {
    mode: std::sync::OnceLock<String>,
    /// Requests to `/ok`; handed over across hot reloads.
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `config.stop_delay_ms`, with the host's timer to wait it out in `stop`.
    stop_delay: std::sync::OnceLock<(modhost_plugin_api::Timer, u64)>,
}

async fn transactions(db: Database) -> std::result::Result<Response, DbError> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS tx_items (label TEXT NOT NULL)",
        &[],
    )
    .await?;
    let tx = db.begin().await?;
    tx.execute(
        "INSERT INTO tx_items (label) VALUES ($1)",
        params!["rolled back"],
    )
    .await?;
    tx.rollback().await?;
    let tx = db.begin().await?;
    tx.execute(
        "INSERT INTO tx_items (label) VALUES ($1)",
        params!["committed"],
    )
    .await?;
    let inside = tx.query("SELECT count(*) AS n FROM tx_items", &[]).await?;
    tx.commit().await?;
    let dropped = db.begin().await?;
    dropped
        .execute(
            "INSERT INTO tx_items (label) VALUES ($1)",
            params!["dropped"],
        )
        .await?;
    drop(dropped);
    let labels: Vec<String> = db
        .query("SELECT label FROM tx_items ORDER BY label", &[])
        .await?
        .iter()
        .map(|r| r.get::<String>("label"))
        .collect::<std::result::Result<_, _>>()?;
    let typed = db
        .query(
            "SELECT $1 AS i, $2 AS f, $3 AS t, $4 AS b, $5 AS n",
            params![42i64, 1.5f64, "text", vec![1u8, 2, 3], None::<String>],
        )
        .await?;
    let row = typed.iter().next().map(|r| r.to_json()).unwrap_or_default();
    Ok(Response::json(
        200,
        &json!({ "labels": labels, "count_inside": inside.iter().next().map(|r| r.to_json()), "typed": row }),
    ))
}

/// Routes that end the process they run in, and one that reads any file.
fn crash_routes(ctx: &mut InitContext, name: &str) -> Result<()> {
    ctx.route(
        Method::Get,
        &format!("/api/v1/{name}/crash/{{how}}"),
        format!("{name}.probe.read"),
        |req| async move {
            match req.param("how").unwrap_or("") {
                // SAFETY: none; writing to the null address is the point of this route.
                "segfault" => unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u64>(), 1) },
                "abort" => std::process::abort(),
                "stack" => {
                    std::hint::black_box(recurse(std::hint::black_box(1)));
                }
                "alloc" => {
                    let mut kept: Vec<Vec<u8>> = Vec::new();
                    loop {
                        // Written, so the pages are really used.
                        kept.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&kept);
                    }
                }
                "spin" => loop {
                    std::hint::spin_loop();
                },
                _ => return Response::text(404, "unknown crash"),
            }
            Response::new(200)
        },
    )?;
    ctx.route(
        Method::Get,
        &format!("/api/v1/{name}/signal"),
        format!("{name}.probe.read"),
        |req| async move {
            let pid = req.query_param("pid").unwrap_or_default();
            match std::process::Command::new("kill")
                .args(["-0", &pid])
                .status()
            {
                Ok(status) if status.success() => Response::json(200, &json!({ "signalled": pid })),
                Ok(status) => Response::json(403, &json!({ "error": status.to_string() })),
                Err(e) => Response::json(403, &json!({ "error": e.to_string() })),
            }
        },
    )?;
    ctx.route(
        Method::Get,
        &format!("/api/v1/{name}/fs"),
        format!("{name}.probe.read"),
        |req| async move {
            let path = req.query_param("path").unwrap_or_default();
            match std::fs::read(&path) {
                Ok(bytes) => Response::json(200, &json!({ "bytes": bytes.len() })),
                Err(e) => Response::json(403, &json!({ "error": e.to_string() })),
            }
        },
    )
}

/// Recursion without end, with a frame the optimiser cannot remove.
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 512]);
    recurse(frame[7].wrapping_add(1)).wrapping_add(frame[3])
}

/// Counts a running handler from its call until its future is dropped (answered or
/// cancelled).
struct Running(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Running {
    fn enter(counter: &std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PlatformConfig {
    subscribe: Vec<String>,
    provide: Vec<String>,
    slow_ms: u64,
    fail_first: u32,
    fail_always: bool,
    service_delay_ms: u64,
}

/// Test-only routes for events, cache and services, configured by `config`.
fn platform_routes(ctx: &mut InitContext, name: &str) -> Result<()> {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let cfg: PlatformConfig =
        serde_json::from_value(ctx.config_value().clone()).unwrap_or_default();
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    for pattern in &cfg.subscribe {
        let (received, timer) = (received.clone(), ctx.timer());
        let (slow, fail_first, fail_always) = (cfg.slow_ms, cfg.fail_first, cfg.fail_always);
        ctx.subscribe(pattern, move |event: Event| {
            let (received, timer) = (received.clone(), timer.clone());
            async move {
                if slow > 0 {
                    timer.sleep(Duration::from_millis(slow)).await;
                }
                if fail_always || event.attempt <= fail_first {
                    return Err(Error::new(format!(
                        "configured to fail attempt {}",
                        event.attempt
                    )));
                }
                received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(json!({
                        "id": event.id, "topic": event.topic, "source": event.source,
                        "payload": event.payload, "attempt": event.attempt,
                    }));
                Ok(())
            }
        })?;
    }
    for service in &cfg.provide {
        let (timer, delay) = (ctx.timer(), cfg.service_delay_ms);
        ctx.provide(
            service,
            move |caller: Caller, request: serde_json::Value| {
                let timer = timer.clone();
                async move {
                    if delay > 0 {
                        timer.sleep(Duration::from_millis(delay)).await;
                    }
                    if request.get("fail").is_some() {
                        return Err(CallError::new(CallErrorKind::NotFound, "asked to fail"));
                    }
                    Ok::<_, CallError>(json!({ "echo": request, "caller": caller.module }))
                }
            },
        )?;
    }
    let events = ctx.events();
    ctx.route(
        Method::Post,
        &format!("/api/v1/{name}/publish"),
        format!("{name}.probe.write"),
        move |req| {
            let events = events.clone();
            async move {
                let body: serde_json::Value = req.json()?;
                let topic = body["topic"].as_str().unwrap_or("").to_string();
                let count = body["count"].as_u64().unwrap_or(1);
                for i in 0..count {
                    let payload = json!({ "seq": i, "data": body["payload"] });
                    if let Err(e) = events.publish(&topic, &payload).await {
                        return Ok(Response::json(
                            422,
                            &json!({ "kind": format!("{:?}", e.kind), "error": e.message }),
                        ));
                    }
                }
                Ok::<_, Response>(Response::json(200, &json!({ "published": count })))
            }
        },
    )?;
    let seen = received.clone();
    ctx.route(
        Method::Get,
        &format!("/api/v1/{name}/events"),
        format!("{name}.probe.read"),
        move |_req| {
            let list = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            async move { Response::json(200, &list) }
        },
    )?;
    let cache = ctx.cache();
    ctx.route(
        Method::Put,
        &format!("/api/v1/{name}/cache/{{key}}"),
        format!("{name}.probe.write"),
        move |req| {
            let cache = cache.clone();
            async move {
                let ttl = req
                    .query_param("ttl_ms")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_millis);
                cache
                    .set(req.param("key").unwrap_or(""), req.body().to_vec(), ttl)
                    .await
                    .map_err(Response::from)?;
                Ok::<_, Response>(Response::new(204))
            }
        },
    )?;
    let cache = ctx.cache();
    ctx.route(
        Method::Get,
        &format!("/api/v1/{name}/cache/{{key}}"),
        format!("{name}.probe.read"),
        move |req| {
            let cache = cache.clone();
            async move {
                match cache
                    .get(req.param("key").unwrap_or(""))
                    .await
                    .map_err(Response::from)?
                {
                    Some(v) => Ok::<_, Response>(Response::new(200).with_body(v)),
                    None => Ok(Response::error(404, "not cached")),
                }
            }
        },
    )?;
    let cache = ctx.cache();
    ctx.route(
        Method::Delete,
        &format!("/api/v1/{name}/cache/{{key}}"),
        format!("{name}.probe.write"),
        move |req| {
            let cache = cache.clone();
            async move {
                cache
                    .delete(req.param("key").unwrap_or(""))
                    .await
                    .map_err(Response::from)?;
                Ok::<_, Response>(Response::new(204))
            }
        },
    )?;
    let services = ctx.services();
    ctx.route(
        Method::Post,
        &format!("/api/v1/{name}/call"),
        format!("{name}.probe.write"),
        move |req| {
            let services = services.clone();
            async move {
                let body: serde_json::Value = req.json()?;
                let service = body["service"].as_str().unwrap_or("").to_string();
                let timeout = Duration::from_millis(body["timeout_ms"].as_u64().unwrap_or(2000));
                let result: std::result::Result<serde_json::Value, CallError> =
                    services.call(&service, &body["request"], timeout).await;
                Ok::<_, Response>(match result {
                    Ok(v) => Response::json(200, &v),
                    Err(e) => Response::json(
                        422,
                        &json!({ "kind": format!("{:?}", e.kind), "error": e.message }),
                    ),
                })
            }
        },
    )?;
    Ok(())
}

impl Module for Faulty {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let name = ctx.module_name().to_string();
        let mode = ctx
            .config_value()
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("ok")
            .to_string();
        tracing::info!(mode = %mode, "faulty init");
        if let Some(ms) = ctx
            .config_value()
            .get("stop_delay_ms")
            .and_then(|v| v.as_u64())
        {
            let _ = self.stop_delay.set((ctx.timer(), ms));
        }
        let _ = self.mode.set(mode.clone());
        match mode.as_str() {
            "init_error" => return Err(Error::new("configured to fail in init")),
            "init_panic" => panic!("configured to panic in init"),
            "init_hang" => std::future::pending::<()>().await,
            "bad_route" => {
                let _ = ctx.route(
                    Method::Get,
                    "/api/v1/someone_else/x",
                    format!("{name}.probe.read"),
                    |_req| async { Response::new(200) },
                );
                return Ok(());
            }
            "undeclared_permission" => {
                let path = format!("/api/v1/{name}/secret");
                let _ = ctx.route(
                    Method::Get,
                    &path,
                    format!("{name}.secret.read"),
                    |_req| async { Response::new(200) },
                );
            }
            // A description naming a path parameter the route does not have: the host
            // fails the module's init even though the error is ignored here.
            "bad_description" => {
                let path = format!("/api/v1/{name}/items/{{id}}");
                ctx.route(
                    Method::Get,
                    &path,
                    format!("{name}.probe.read"),
                    |_req| async { Response::new(200) },
                )?;
                let doc = RouteDoc::new("an item").param("item", serde_json::json!({}));
                let _ = ctx.describe_route(Method::Get, &path, doc);
            }
            "conflict" => {
                let path = format!("/api/v1/{name}/items/{{id}}");
                let other = format!("/api/v1/{name}/items/{{item}}");
                ctx.route(
                    Method::Get,
                    &path,
                    format!("{name}.probe.read"),
                    |_req| async { Response::new(200) },
                )?;
                ctx.route(
                    Method::Get,
                    &other,
                    format!("{name}.probe.read"),
                    |_req| async { Response::new(200) },
                )?;
            }
            _ => {}
        }
        let module = name.clone();
        let reply = ctx
            .config_value()
            .get("reply")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let hits = self.hits.clone();
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/ok"),
            format!("{name}.probe.read"),
            move |req| {
                let module = module.clone();
                let reply = reply.clone();
                let hits = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move {
                    let user = req.user().map(
                        |u| json!({ "id": u.id, "email": u.email, "permissions": u.permissions }),
                    );
                    Response::json(
                        200,
                        &json!({ "module": module, "query": req.query(), "user": user, "reply": reply, "hits": hits }),
                    )
                }
            },
        )?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/framing"),
            format!("{name}.probe.read"),
            |_req| async {
                // Headers that would corrupt HTTP framing if passed through.
                Response::text(200, "short body")
                    .with_header("content-length", "999")
                    .with_header("transfer-encoding", "chunked")
                    .with_header("connection", "close")
                    .with_header("x-kept", "yes")
            },
        )?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/boom"),
            format!("{name}.probe.read"),
            |_req| async {
                if true {
                    panic!("handler configured to panic");
                }
                Response::new(200)
            },
        )?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/hang"),
            format!("{name}.probe.read"),
            |_req| async {
                std::future::pending::<()>().await;
                Response::new(200)
            },
        )?;
        ctx.route(
            Method::Post,
            &format!("/api/v1/{name}/echo"),
            format!("{name}.probe.write"),
            |req| async move { Response::new(200).with_body(req.body().to_vec()) },
        )?;
        platform_routes(ctx, &name)?;
        crash_routes(ctx, &name)?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/big"),
            format!("{name}.probe.read"),
            |req| async move {
                let n = req
                    .query_param("bytes")
                    .and_then(|b| b.parse::<usize>().ok())
                    .unwrap_or(0);
                Response::new(200).with_body(vec![b'x'; n])
            },
        )?;
        let timer = ctx.timer();
        // How many `/slow` handlers are running right now (tests wait on it).
        let running = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = running.clone();
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/slow"),
            format!("{name}.probe.read"),
            move |req| {
                let timer = timer.clone();
                let running = Running::enter(&counter);
                async move {
                    let _running = running;
                    let ms = req
                        .query_param("ms")
                        .and_then(|m| m.parse::<u64>().ok())
                        .unwrap_or(100);
                    timer.sleep(std::time::Duration::from_millis(ms)).await;
                    Response::json(200, &json!({ "slept_ms": ms }))
                }
            },
        )?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/slow/running"),
            format!("{name}.probe.read"),
            move |_req| {
                let n = running.load(std::sync::atomic::Ordering::SeqCst);
                async move { Response::json(200, &json!({ "running": n })) }
            },
        )?;
        // Test-only: uses all four core service handles on behalf of the caller.
        let (auth, identity, authz, audit) = (ctx.auth(), ctx.identity(), ctx.authz(), ctx.audit());
        ctx.route(Method::Get, &format!("/api/v1/{name}/core"), format!("{name}.probe.read"), move |req| {
            let (auth, identity, authz, audit) = (auth.clone(), identity.clone(), authz.clone(), audit.clone());
            async move {
                let token = req.header("authorization").unwrap_or("").trim_start_matches("Bearer ").to_string();
                let info = auth.validate_token(&token).await?;
                let me = identity.get_user(&info.user_id).await?;
                let can_write = authz.check(&me.id, "blog.post.create").await?;
                audit.record(&me.id, "probe.core", "self", "success", "from a module").await?;
                let mine = audit.query(Some("probe.core"), 10, None).await?;
                let missing = identity.get_user("no-such-user").await.err().map(|e| format!("{:?}", e.kind));
                Ok::<_, CallError>(Response::json(
                    200,
                    &json!({ "email": me.email, "can_write": can_write, "audit": mine.len(), "missing": missing }),
                ))
            }
        })?;
        // Test-only: runs the SQL in the body on this module's database.
        let db = ctx.database();
        ctx.route(
            Method::Post,
            &format!("/api/v1/{name}/sql"),
            format!("{name}.probe.write"),
            move |req| {
                let db = db.clone();
                async move {
                    let sql = String::from_utf8_lossy(req.body()).into_owned();
                    match db.query(&sql, &[]).await {
                        Ok(rows) => {
                            let rows: Vec<_> = rows.iter().map(|r| r.to_json()).collect();
                            Response::json(200, &json!({ "rows": rows }))
                        }
                        Err(e) => Response::json(
                            422,
                            &json!({ "kind": format!("{:?}", e.kind), "error": e.message }),
                        ),
                    }
                }
            },
        )?;
        // Test-only: a rolled-back, a committed and a dropped transaction, typed values.
        let db = ctx.database();
        ctx.route(
            Method::Post,
            &format!("/api/v1/{name}/tx"),
            format!("{name}.probe.write"),
            move |_req| {
                let db = db.clone();
                async move { transactions(db).await.map_err(Response::from) }
            },
        )?;
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        match self.mode.get().map(String::as_str) {
            Some("start_error") => Err(Error::new("configured to fail in start")),
            _ => Ok(()),
        }
    }

    async fn stop(&self) -> Result<()> {
        tracing::info!("faulty stopping");
        if let Some((timer, ms)) = self.stop_delay.get() {
            timer.sleep(std::time::Duration::from_millis(*ms)).await;
        }
        Ok(())
    }

    async fn export_state(&self) -> Result<Option<Vec<u8>>> {
        let hits = self.hits.load(std::sync::atomic::Ordering::SeqCst);
        Ok(Some(hits.to_le_bytes().to_vec()))
    }

    async fn import_state(&self, state: Vec<u8>) -> Result<()> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| Error::new("state must be 8 bytes"))?;
        self.hits.store(
            u64::from_le_bytes(bytes),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }
}

modhost_plugin_api::export_module!(Faulty);
