//! `hello`: the minimal example module. One route, one config value.

use modhost_plugin_api::prelude::*;
use serde_json::json;

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Hello;

impl Module for Hello {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let greeting = ctx
            .config_value()
            .get("greeting")
            .and_then(|v| v.as_str())
            .unwrap_or("Hello")
            .to_string();
        ctx.route(
            Method::Get,
            "/api/v1/hello/greet/{name}",
            permissions::GREETING_READ,
            move |req| {
                let greeting = greeting.clone();
                async move {
                    let name = req.param("name").unwrap_or("world");
                    Response::json(200, &json!({ "message": format!("{greeting}, {name}!") }))
                }
            },
        )?;
        tracing::info!("hello module initialised");
        Ok(())
    }
}

modhost_plugin_api::export_module!(Hello);
