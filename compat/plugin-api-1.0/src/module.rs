//! The [`Module`] trait: what a plugin author implements.

use std::future::Future;

use crate::{InitContext, Result};

/// A modhost module. Implement it on a type with a [`Default`] value and export the type
/// with [`crate::export_module!`].
///
/// The host calls `init` once, in dependency order, then `start`; on shutdown it calls
/// `stop` in reverse order. On a hot reload the new instance is initialised and started
/// while the old one still serves, then traffic switches and the old one is stopped. An `Err` or a panic in any of them fails this module only.
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

    /// Hot reload: the old instance hands its in-memory state to the new one. Called on
    /// the old instance after the new one's `init` succeeded; requests may still reach
    /// the old instance until the switch, so keep the state derivable or idempotent.
    /// Optional; `None` hands nothing over.
    fn export_state(&self) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        async { Ok(None) }
    }

    /// Hot reload: receives what the old instance exported, before the switch.
    /// Optional. An `Err` keeps the old version serving.
    fn import_state(&self, state: Vec<u8>) -> impl Future<Output = Result<()>> + Send {
        let _ = state;
        async { Ok(()) }
    }
}
