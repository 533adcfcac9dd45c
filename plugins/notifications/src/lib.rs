//! `notifications`: turns `blog.post.created` and `billing.subscription.*` events into
//! stored notifications (table `notifications`), listed by a route.

use modhost_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Notifications;

#[derive(Debug, Serialize, Deserialize)]
struct Notification {
    id: i64,
    event_id: String,
    topic: String,
    message: String,
}

fn message(event: &Event) -> String {
    let p = &event.payload;
    match event.topic.as_str() {
        "blog.post.created" => format!("New post: {}", p["title"].as_str().unwrap_or("(untitled)")),
        topic => format!(
            "{topic}: user {} plan {}",
            p["user_id"].as_str().unwrap_or("?"),
            p["plan"].as_str().unwrap_or("?")
        ),
    }
}

impl Module for Notifications {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let db = ctx.database();
        for pattern in ["blog.post.created", "billing.subscription.*"] {
            let db = db.clone();
            ctx.subscribe(pattern, move |event: Event| {
                let db = db.clone();
                async move {
                    // Idempotent: a redelivered event is stored once (event ids are
                    // globally unique, and the same on every retry).
                    db.execute(
                        "INSERT INTO notifications (event_id, topic, message) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
                        params![event.id.clone(), event.topic.clone(), message(&event)],
                    )
                    .await?;
                    Ok(())
                }
            })?;
        }
        ctx.route(
            Method::Get,
            "/api/v1/notifications/notifications",
            permissions::NOTIFICATION_READ,
            move |_req| {
                let db = db.clone();
                async move {
                    let list: Vec<Notification> = db
                        .query_as(
                            "SELECT id, event_id, topic, message FROM notifications ORDER BY id",
                            &[],
                        )
                        .await?;
                    Ok::<_, DbError>(Response::json(200, &list))
                }
            },
        )?;
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
