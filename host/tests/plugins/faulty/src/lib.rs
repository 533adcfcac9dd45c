//! Test-only module. Its manifest's `config.mode` picks how it misbehaves, so one
//! library serves every fault test:
//!
//! - `ok` (default): `GET /api/v1/<name>/ok`, plus `GET .../boom` that panics and
//!   `GET .../hang` that never answers
//! - `init_error`, `init_panic`, `init_hang`, `start_error`
//! - `bad_route` (out of namespace, error ignored), `conflict` (same route twice)
//!
//! Also `POST .../sql` runs the SQL in the body on the module's database (for
//! isolation tests) and `POST .../echo` returns the body.

use modhost_plugin_api::prelude::*;
use serde_json::json;

#[derive(Default)]
pub struct Faulty;

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
        match mode.as_str() {
            "init_error" => return Err(Error::new("configured to fail in init")),
            "init_panic" => panic!("configured to panic in init"),
            "init_hang" => std::future::pending::<()>().await,
            "bad_route" => {
                let _ = ctx.route(
                    Method::Get,
                    "/api/v1/someone_else/x",
                    &format!("{name}.x.read"),
                    |_req| async { Response::new(200) },
                );
                return Ok(());
            }
            "conflict" => {
                let path = format!("/api/v1/{name}/items/{{id}}");
                let other = format!("/api/v1/{name}/items/{{item}}");
                ctx.route(
                    Method::Get,
                    &path,
                    &format!("{name}.item.read"),
                    |_req| async { Response::new(200) },
                )?;
                ctx.route(
                    Method::Get,
                    &other,
                    &format!("{name}.item.read"),
                    |_req| async { Response::new(200) },
                )?;
            }
            _ => {}
        }
        let module = name.clone();
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/ok"),
            &format!("{name}.probe.read"),
            move |req| {
                let module = module.clone();
                async move { Response::json(200, &json!({ "module": module, "query": req.query })) }
            },
        )?;
        ctx.route(
            Method::Get,
            &format!("/api/v1/{name}/boom"),
            &format!("{name}.probe.read"),
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
            &format!("{name}.probe.read"),
            |_req| async {
                std::future::pending::<()>().await;
                Response::new(200)
            },
        )?;
        ctx.route(
            Method::Post,
            &format!("/api/v1/{name}/echo"),
            &format!("{name}.probe.write"),
            |req| async move { Response::new(200).with_body(req.body) },
        )?;
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        tracing::info!("faulty stopping");
        Ok(())
    }
}

modhost_plugin_api::export_module!(Faulty);
