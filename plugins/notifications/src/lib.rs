//! `notifications`: depends on `blog` and `billing`; reports its status.
//!
//! It grows an event subscription and storage in the event-bus issue.

use modhost_plugin_api::prelude::*;
use serde_json::json;

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Notifications;

impl Module for Notifications {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        ctx.route(
            Method::Get,
            "/api/v1/notifications/status",
            permissions::STATUS_READ,
            |_req| async {
                Response::json(
                    200,
                    &json!({ "status": "ok", "after": ["billing", "blog"] }),
                )
            },
        )?;
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        tracing::info!("notifications stopping");
        Ok(())
    }
}

modhost_plugin_api::export_module!(Notifications);
