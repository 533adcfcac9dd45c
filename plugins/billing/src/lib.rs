//! `billing`: subscription plans, read from the module's config.

use modhost_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

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

impl Module for Billing {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let config: Config = ctx.config()?;
        let plans = config.plans;
        ctx.route(
            Method::Get,
            "/api/v1/billing/plans",
            "billing.plan.read",
            move |_req| {
                let body = Response::json(200, &plans);
                async move { body }
            },
        )?;
        Ok(())
    }
}

modhost_plugin_api::export_module!(Billing);
