//! # modhost plugin API
//!
//! Write a modhost module in plain async Rust:
//!
//! ```
//! use modhost_plugin_api::prelude::*;
//!
//! #[derive(Default)]
//! pub struct Hello;
//!
//! impl Module for Hello {
//!     async fn init(&self, ctx: &mut InitContext) -> Result<()> {
//!         ctx.route(Method::Get, "/api/v1/hello/greet/{name}", "hello.greeting.read", |req| async move {
//!             let name = req.param("name").unwrap_or("world").to_string();
//!             Response::json(200, &serde_json::json!({ "greeting": format!("Hello, {name}!") }))
//!         })?;
//!         tracing::info!("hello is ready");
//!         Ok(())
//!     }
//! }
//!
//! modhost_plugin_api::export_module!(Hello);
//! ```
//!
//! Build the crate as a `cdylib`. The host does all I/O; a module never starts a runtime
//! of its own. `tracing` events and panics inside the module are forwarded to the host's
//! log, tagged with the module's name. The FFI contract lives in [`ffi`]; nothing else in
//! this crate crosses the library boundary.

#[cfg(feature = "runtime")]
mod adapter;
#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "runtime")]
mod cache;
#[cfg(feature = "runtime")]
mod clients;
#[cfg(feature = "runtime")]
mod context;
#[cfg(feature = "runtime")]
mod database;
#[cfg(feature = "runtime")]
mod describe;
#[cfg(feature = "runtime")]
mod error;
#[cfg(feature = "runtime")]
mod events;
#[cfg(feature = "runtime")]
pub mod ffi;
#[cfg(feature = "runtime")]
mod http;
#[cfg(feature = "runtime")]
mod logging;
#[cfg(feature = "runtime")]
mod module;
mod permission;
#[cfg(feature = "runtime")]
mod services;
#[cfg(feature = "runtime")]
mod user;

#[cfg(feature = "runtime")]
pub use cache::{Cache, Timer};
#[cfg(feature = "runtime")]
pub use clients::{
    AuditClient, AuditEntry, AuthClient, AuthzClient, CallError, CallErrorKind, IdentityClient,
    TokenInfo, UserInfo,
};
#[cfg(feature = "runtime")]
pub use context::InitContext;
#[cfg(feature = "runtime")]
pub use database::{Database, DbError, DbErrorKind, Row, Rows, Transaction, Value};
#[cfg(all(feature = "runtime", feature = "schema"))]
pub use describe::schema_of;
#[cfg(feature = "runtime")]
pub use describe::RouteDoc;
#[cfg(feature = "runtime")]
pub use error::{Error, Result};
#[cfg(feature = "runtime")]
pub use events::{Event, Events};
#[cfg(feature = "runtime")]
pub use ffi::PLUGIN_API_VERSION;
#[cfg(feature = "runtime")]
pub use http::{IntoResponse, Method, Request, Response};
#[cfg(feature = "runtime")]
pub use module::Module;
pub use permission::{permission_matches, Permission};
#[cfg(feature = "runtime")]
pub use services::{Caller, Services};
#[cfg(feature = "runtime")]
pub use user::User;

/// Re-exports for the common case: `use modhost_plugin_api::prelude::*;`.
#[cfg(feature = "runtime")]
pub mod prelude {
    pub use crate::{
        params, AuditClient, AuthClient, AuthzClient, Cache, CallError, CallErrorKind, Caller,
        Database, DbError, DbErrorKind, Error, Event, Events, IdentityClient, InitContext,
        IntoResponse, Method, Module, Permission, Request, Response, Result, RouteDoc, Row, Rows,
        Services, Timer, Transaction, User, Value,
    };
}

/// The text of a panic payload, when it is a string.
#[cfg(feature = "runtime")]
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Items the [`export_module!`] macro expands to. Not part of the public API.
#[cfg(feature = "runtime")]
#[doc(hidden)]
pub mod __private {
    pub use crate::adapter::root_module;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
}

/// Exports a [`Module`] type (which must implement [`Default`]) as this library's module.
///
/// Use it once per `cdylib` crate.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        // The symbol abi_stable's loader looks up (abi_stable 0.11's
        // `ROOT_MODULE_LOADER_NAME`; a unit test in plugin-api keeps the two in sync).
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __MODHOST_ROOT_MODULE_LOADER: $crate::__private::LibHeader = {
            extern "C" fn __modhost_load_root() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(
                    $crate::__private::root_module::<$module>,
                )
            }
            // SAFETY: the constructor returns the root module type named here, and the
            // layout is checked by the host when it loads the library.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::ffi::ModuleRootRef>(
                    __modhost_load_root,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// The plugin author's guide, compiled as doctests: the blocks it marks as running run;
/// the guide says which blocks only compile and which are built as real plugins.
#[cfg(all(doctest, feature = "runtime"))]
#[doc = include_str!("../../docs/writing-a-plugin.md")]
mod writing_a_plugin_guide {}

#[cfg(all(test, feature = "runtime"))]
mod tests {
    #[test]
    fn export_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
