//! `billing`: subscription plans (from config) and subscriptions (table
//! `billing_subscriptions` in the module's own database).

use modhost_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Billing;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    id: String,
    monthly_cents: u64,
}

#[derive(Debug, Deserialize)]
struct Config {
    plans: Vec<Plan>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Subscription {
    id: i64,
    user_id: String,
    plan: String,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    user_id: String,
    plan: String,
}

type HandlerResult = std::result::Result<Response, Response>;

async fn subscribe(db: Database, plans: Vec<Plan>, req: Request) -> HandlerResult {
    let new: NewSubscription = req.json()?;
    if new.user_id.trim().is_empty() {
        return Err(Response::error(400, "user_id must not be empty"));
    }
    if !plans.iter().any(|p| p.id == new.plan) {
        let known: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        return Err(Response::error(
            400,
            format!("unknown plan `{}`; plans: {}", new.plan, known.join(", ")),
        ));
    }
    let sub: Option<Subscription> = db
        .query_opt_as(
            "INSERT INTO billing_subscriptions (user_id, plan) VALUES ($1, $2) RETURNING id, user_id, plan, status",
            params![new.user_id, new.plan],
        )
        .await?;
    sub.map(|s| Response::json(201, &s))
        .ok_or_else(|| Response::error(500, "insert returned no row"))
}

async fn get(db: Database, req: Request) -> HandlerResult {
    let id = req
        .param("id")
        .and_then(|id| id.parse::<i64>().ok())
        .ok_or_else(|| Response::error(400, "subscription id must be an integer"))?;
    let sub: Option<Subscription> = db
        .query_opt_as(
            "SELECT id, user_id, plan, status FROM billing_subscriptions WHERE id = $1",
            params![id],
        )
        .await?;
    sub.map(|s| Response::json(200, &s))
        .ok_or_else(|| Response::error(404, format!("no subscription with id {id}")))
}

impl Module for Billing {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let config: Config = ctx.config()?;
        let plans = config.plans;
        let db = ctx.database();
        let listed = plans.clone();
        ctx.route(
            Method::Get,
            "/api/v1/billing/plans",
            permissions::PLAN_READ,
            move |_req| {
                let body = Response::json(200, &listed);
                async move { body }
            },
        )?;
        let d = db.clone();
        ctx.route(
            Method::Post,
            "/api/v1/billing/subscriptions",
            permissions::SUBSCRIPTION_CREATE,
            move |req| subscribe(d.clone(), plans.clone(), req),
        )?;
        ctx.route(
            Method::Get,
            "/api/v1/billing/subscriptions/{id}",
            permissions::SUBSCRIPTION_READ,
            move |req| get(db.clone(), req),
        )?;
        Ok(())
    }
}

modhost_plugin_api::export_module!(Billing);
