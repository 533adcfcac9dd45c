//! A module built against a changed plugin-api interface; see Cargo.toml.

use modhost_plugin_api::prelude::*;

#[derive(Default)]
pub struct Mismatch;

impl Module for Mismatch {
    async fn init(&self, _ctx: &mut InitContext) -> Result<()> {
        Ok(())
    }
}

modhost_plugin_api::export_module!(Mismatch);
