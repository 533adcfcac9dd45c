//! `hello`: the minimal example module. A public greeting route, a private one, and one
//! config value.
//!
//! Its routes and permissions are built from the module's name, so copies of the library
//! can run under other names (the benchmarks start hundreds of them).

use modhost_plugin_api::prelude::*;
use serde_json::json;

#[derive(Default)]
pub struct Hello;

impl Module for Hello {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let name = ctx.module_name().to_string();
        let greeting = ctx
            .config_value()
            .get("greeting")
            .and_then(|v| v.as_str())
            .unwrap_or("Hello")
            .to_string();
        let permission = format!("{name}.greeting.read");
        for kind in ["greet", "private"] {
            let greeting = greeting.clone();
            ctx.route(
                Method::Get,
                &format!("/api/v1/{name}/{kind}/{{name}}"),
                &permission,
                move |req| {
                    let body = json!({ "message": format!("{greeting}, {}!", req.param("name").unwrap_or("world")) });
                    async move { Response::json(200, &body) }
                },
            )?;
        }
        tracing::info!("hello module initialised");
        Ok(())
    }
}

modhost_plugin_api::export_module!(Hello);
