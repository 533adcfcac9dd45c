//! `billing`: subscription plans (from config) and subscriptions (table
//! `billing_subscriptions` in the module's own database). Publishes
//! `billing.subscription.created`; provides the service `billing.subscription.get`.

use modhost_plugin_api::{prelude::*, schema_of};
use serde::{Deserialize, Serialize};
use serde_json::json;

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Billing;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct Plan {
    id: String,
    monthly_cents: u64,
}

#[derive(Debug, Deserialize)]
struct Config {
    plans: Vec<Plan>,
}

/// A subscription; also the payload of `billing.subscription.created`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
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

async fn subscribe(db: Database, events: Events, plans: Vec<Plan>, req: Request) -> HandlerResult {
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
    let sub = sub.ok_or_else(|| Response::error(500, "insert returned no row"))?;
    events.publish("billing.subscription.created", &sub).await?;
    Ok(Response::json(201, &sub))
}

#[derive(Debug, Deserialize)]
struct SubscriptionQuery {
    user_id: String,
}

/// Service `billing.subscription.get`: the user's active subscription.
///
/// Asked inside a request, it answers only about the end user themself, or for a user
/// who may read subscriptions (`billing.subscription.read`): a module that depends on
/// billing cannot be used to read someone else's subscription. A call made outside a
/// request (no end user) is answered for any user, trusting the calling module.
async fn active_subscription(
    db: Database,
    caller: Caller,
    query: SubscriptionQuery,
) -> Result<Subscription, CallError> {
    if let Some(user) = caller.user() {
        if user.id != query.user_id && !user.has(permissions::SUBSCRIPTION_READ) {
            tracing::warn!(caller = %caller.module, user = %user.id, asked = %query.user_id, "subscription of another user refused");
            return Err(CallError::not_found(format!(
                "user {} has no active subscription",
                query.user_id
            )));
        }
    }
    let found: Option<Subscription> = db
        .query_opt_as(
            "SELECT id, user_id, plan, status FROM billing_subscriptions WHERE user_id = $1 AND status = 'active' ORDER BY id DESC LIMIT 1",
            params![query.user_id.clone()],
        )
        .await?;
    found.ok_or_else(|| {
        CallError::not_found(format!("user {} has no active subscription", query.user_id))
    })
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
        let config_plans = plans.clone();
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
        let (d, events) = (db.clone(), ctx.events());
        ctx.route(
            Method::Post,
            "/api/v1/billing/subscriptions",
            permissions::SUBSCRIPTION_CREATE,
            move |req| subscribe(d.clone(), events.clone(), plans.clone(), req),
        )?;
        let d = db.clone();
        ctx.provide(
            "billing.subscription.get",
            move |caller: Caller, query: SubscriptionQuery| {
                active_subscription(d.clone(), caller, query)
            },
        )?;
        ctx.route(
            Method::Get,
            "/api/v1/billing/subscriptions/{id}",
            permissions::SUBSCRIPTION_READ,
            move |req| get(db.clone(), req),
        )?;
        describe(ctx, &config_plans)?;
        Ok(())
    }
}

/// What `/openapi.json` says of the routes and the event. The plans come from config, so
/// the schema of a new subscription is built at init.
fn describe(ctx: &mut InitContext, plans: &[Plan]) -> Result<()> {
    let plan_ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
    let subscription = schema_of::<Subscription>();
    ctx.describe_route(
        Method::Get,
        "/api/v1/billing/plans",
        RouteDoc::new("The plans on offer").response(
            200,
            json!({ "type": "array", "items": schema_of::<Plan>() }),
        ),
    )?;
    ctx.describe_route(
        Method::Post,
        "/api/v1/billing/subscriptions",
        RouteDoc::new("Subscribe a user to a plan; publishes billing.subscription.created")
            .body(json!({
                "type": "object",
                "properties": {
                    "user_id": { "type": "string", "minLength": 1, "pattern": "\\S" },
                    "plan": { "enum": plan_ids },
                },
                "required": ["user_id", "plan"],
                "additionalProperties": false,
            }))
            .response(201, subscription.clone()),
    )?;
    ctx.describe_route(
        Method::Get,
        "/api/v1/billing/subscriptions/{id}",
        RouteDoc::new("A subscription by id")
            .param("id", json!({ "type": "integer", "format": "int64" }))
            .response(200, subscription.clone()),
    )?;
    ctx.describe_event("billing.subscription.created", subscription)
}

modhost_plugin_api::export_module!(Billing);
