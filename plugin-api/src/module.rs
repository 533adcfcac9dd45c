//! The [`Module`] trait: what a plugin author implements.

use std::future::Future;

use crate::{InitContext, Result};

/// A modhost module. Implement it on a type with a [`Default`] value and export the type
/// with [`crate::export_module!`].
///
/// The host calls `init` once, in dependency order, then `start`; on shutdown it calls
/// `stop` in reverse order. An `Err` or a panic in any of them fails this module only.
/// All three run on the host's runtime: do not start a runtime of your own.
pub trait Module: Send + Sync + 'static {
    /// Register routes and read config. Runs before any request reaches the module.
    fn init(&self, ctx: &mut InitContext) -> impl Future<Output = Result<()>> + Send;

    /// Called once every module has been initialised. Optional.
    fn start(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Called on shutdown, after in-flight requests were drained. Optional.
    fn stop(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}
