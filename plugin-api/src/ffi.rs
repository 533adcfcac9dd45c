//! The FFI contract between the host and a module library.
//!
//! Everything in this file crosses the shared-library boundary and is checked by
//! abi_stable's layout check when a library is loaded. Plugin authors never touch these
//! types: the SDK in the rest of this crate wraps them.
//!
//! Frozen at 1.0 (see `docs/compatibility.md`). A minor release may only add, at the
//! end of a `#[sabi_trait]` (after its `last_prefix_field`), methods **with a default
//! body** that works when the other side was built against an older minor: abi_stable
//! runs that default when the object comes from an older library. The `#[repr(C)]`
//! structs and enums below never change within 1.x; new data travels through new
//! methods. Anything else needs plugin-api 2.0.

// abi_stable's `sabi_trait` macro generates impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
    StableAbi,
};
use async_ffi::FfiFuture;

/// A header or parameter pair.
pub type FfiPair = Tuple2<RString, RString>;

/// Result of a module entry point: `Err` carries a human-readable reason.
pub type FfiUnitResult = RResult<(), RString>;

/// An HTTP request as handed to a module's handler: an object the host made for this
/// call, owning the request as the host received it. Its accessors borrow from it, so
/// nothing is copied across the boundary unless the module asks for it (`user` copies).
#[sabi_trait]
pub trait FfiRequestView: Send + Sync {
    fn method(&self) -> RStr<'_>;
    fn path(&self) -> RStr<'_>;
    /// The raw query string, without `?`.
    fn query(&self) -> RStr<'_>;
    /// The path parameter at `index` (pattern order), percent-decoded.
    fn param(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RStr<'_>>>;
    /// The header at `index`, in the order received: lower-case name, raw value.
    fn header(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RSlice<'_, u8>>>;
    fn body(&self) -> RSlice<'_, u8>;
    /// The authenticated caller; `None` on a public route without a token.
    #[sabi(last_prefix_field)]
    fn user(&self) -> ROption<FfiUser>;
}

/// A request object, owned by the handler for the call.
pub type FfiRequest = FfiRequestView_TO<'static, RBox<()>>;

/// The authenticated caller of a request.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct FfiUser {
    pub id: RString,
    pub email: RString,
    /// Granted permissions and patterns (`blog.post.read`, `blog.*`, `*`).
    pub permissions: RVec<RString>,
}

/// An error from [`FfiHost::call`]: a kind from [`call_error`] and a message.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiCallError {
    pub kind: u8,
    pub message: RString,
}

/// An HTTP response produced by a module's handler.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiResponse {
    pub status: u16,
    pub headers: RVec<FfiPair>,
    pub body: RVec<u8>,
    /// Exists only in the test build that checks layout mismatches are refused.
    #[cfg(feature = "__abi_mismatch_for_tests")]
    pub mismatch: u64,
}

/// A route handler living in a module library.
#[sabi_trait]
pub trait FfiHandler: Send + Sync {
    #[sabi(last_prefix_field)]
    fn call(&self, request: FfiRequest) -> FfiFuture<FfiResponse>;
}

/// Owned, shareable handler object.
pub type FfiHandlerBox = FfiHandler_TO<'static, RArc<()>>;

/// A route a module asks the host to serve.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiRoute {
    pub method: RString,
    pub path: RString,
    pub permission: RString,
    pub handler: FfiHandlerBox,
}

/// A value bound to, or read from, an SQL statement.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum FfiValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(RString),
    Bytes(RVec<u8>),
}

/// The rows a query returned.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiRows {
    pub columns: RVec<RString>,
    pub rows: RVec<RVec<FfiValue>>,
}

/// A database error: a kind from [`db_error`], the database's message, and the id
/// under which the host logged it (clients see the id, never the message).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiDbError {
    pub kind: u8,
    pub message: RString,
    pub error_id: RString,
}

/// Result of a database call.
pub type FfiDbResult<T> = RResult<T, FfiDbError>;

/// The module's own database, provided by the host.
#[sabi_trait]
pub trait FfiDatabase: Send + Sync + Clone {
    /// Runs a statement; returns the number of rows affected.
    fn execute(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<u64>>;
    /// Runs a query; returns its rows.
    fn query(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<FfiRows>>;
    /// Starts a transaction.
    #[sabi(last_prefix_field)]
    fn begin(&self) -> FfiFuture<FfiDbResult<FfiTransactionBox>>;
}

/// Owned, cloneable database handle.
pub type FfiDatabaseBox = FfiDatabase_TO<'static, RArc<()>>;

/// An open transaction. Dropping it without `commit` rolls it back.
#[sabi_trait]
pub trait FfiTransaction: Send + Sync {
    fn execute(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<u64>>;
    fn query(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<FfiRows>>;
    fn commit(&self) -> FfiFuture<FfiDbResult<()>>;
    #[sabi(last_prefix_field)]
    fn rollback(&self) -> FfiFuture<FfiDbResult<()>>;
}

/// Owned transaction handle.
pub type FfiTransactionBox = FfiTransaction_TO<'static, RBox<()>>;

/// An event delivered to a subscriber.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct FfiEvent {
    /// Globally unique (a UUIDv7 in text form): the same on every retry and across
    /// hosts and restarts.
    pub id: RString,
    /// When it was published, in milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    pub topic: RString,
    /// The publishing module.
    pub source: RString,
    /// JSON.
    pub payload: RString,
    /// Delivery attempt, from 1.
    pub attempt: u32,
}

/// A module's event handler.
#[sabi_trait]
pub trait FfiEventHandler: Send + Sync {
    #[sabi(last_prefix_field)]
    fn handle(&self, event: FfiEvent) -> FfiFuture<FfiUnitResult>;
}

/// Owned, shareable event handler.
pub type FfiEventHandlerBox = FfiEventHandler_TO<'static, RArc<()>>;

/// A service a module provides to other modules: JSON in, JSON out.
#[sabi_trait]
pub trait FfiServiceHandler: Send + Sync {
    /// 1.0: a call from the module `caller`.
    #[sabi(last_prefix_field)]
    fn call(&self, caller: RString, request: RString) -> FfiFuture<RResult<RString, FfiCallError>>;

    /// Added in 1.1: a call from the module `caller`, made while it handled a request of
    /// the end user `user` (`None`: not inside a request, e.g. from an event handler).
    /// A provider built against 1.0 lacks this method; abi_stable then runs this default
    /// body, which calls the 1.0 `call` without the user.
    fn call_as(
        &self,
        caller: RString,
        user: ROption<FfiUser>,
        request: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let _ = user;
        self.call(caller, request)
    }
}

/// Owned, shareable service handler.
pub type FfiServiceHandlerBox = FfiServiceHandler_TO<'static, RArc<()>>;

/// What the host offers a module. One handle per module: the host knows whose it is.
#[sabi_trait]
pub trait FfiHost: Send + Sync + Clone {
    /// Forward one log event (level 1 = error … 5 = trace) to the host's logger.
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
    /// The most verbose level the host will record (0 = off … 5 = trace).
    fn max_log_level(&self) -> u8;
    /// Register a route; only valid while the module's `init` runs.
    fn register_route(&self, route: FfiRoute) -> FfiUnitResult;
    /// The module's own database.
    fn database(&self) -> FfiDatabaseBox;
    /// Calls a service by name (`core.identity.get_user`, `billing.subscription.get`)
    /// with a JSON request; resolves to the JSON response.
    fn call(
        &self,
        service: RStr<'_>,
        request: RString,
        timeout_ms: u64,
    ) -> FfiFuture<RResult<RString, FfiCallError>>;
    /// Publishes an event (a topic the manifest declares under `events.publishes`);
    /// resolves to the new event's id.
    fn publish(
        &self,
        topic: RStr<'_>,
        payload: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>>;
    /// Subscribes to a pattern declared under `events.subscribes`; init only.
    fn subscribe(&self, pattern: RStr<'_>, handler: FfiEventHandlerBox) -> FfiUnitResult;
    /// Provides a service declared under `services`; init only.
    fn provide(&self, service: RStr<'_>, handler: FfiServiceHandlerBox) -> FfiUnitResult;
    /// Reads a key of this module's cache namespace.
    fn cache_get(&self, key: RStr<'_>) -> FfiFuture<RResult<ROption<RVec<u8>>, FfiCallError>>;
    /// Writes a key of this module's cache namespace; `ttl_ms` 0 means the default TTL.
    fn cache_set(
        &self,
        key: RStr<'_>,
        value: RVec<u8>,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<(), FfiCallError>>;
    /// Deletes a key of this module's cache namespace.
    fn cache_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), FfiCallError>>;
    /// Resolves after `ms` milliseconds, on the host's timer.
    #[sabi(last_prefix_field)]
    fn sleep(&self, ms: u64) -> FfiFuture<()>;

    /// Added in 1.2: describes a route this module registered, for `/openapi.json`;
    /// init only. `doc_json` is an object with any of `summary` (text), `params` and
    /// `query` (name to JSON Schema), `required_query` (names), `body` (JSON Schema) and
    /// `responses` (status to JSON Schema). The host makes this object, so a module never
    /// meets an older host without it (a newer module is refused by version); the
    /// default body exists only because every method added in a minor has one.
    fn describe_route(&self, method: RStr<'_>, path: RStr<'_>, doc_json: RString) -> FfiUnitResult {
        let _ = (method, path, doc_json);
        RResult::RErr("this host cannot take route descriptions".into())
    }

    /// Added in 1.2: the JSON Schema of the payload of an event this module publishes
    /// (a topic under `events.publishes`), for `/openapi.json`; init only.
    fn describe_event(&self, topic: RStr<'_>, schema_json: RString) -> FfiUnitResult {
        let _ = (topic, schema_json);
        RResult::RErr("this host cannot take event descriptions".into())
    }
}

/// Owned, cloneable host handle.
pub type FfiHostBox = FfiHost_TO<'static, RArc<()>>;

/// Everything a module receives when it is initialised.
#[repr(C)]
#[derive(StableAbi)]
pub struct FfiInitContext {
    pub module_name: RString,
    /// The module's config section (manifest defaults merged with host overrides), JSON.
    pub config_json: RString,
    pub host: FfiHostBox,
}

/// A module instance living in a library.
#[sabi_trait]
pub trait FfiModule: Send + Sync {
    fn init(&self, context: FfiInitContext) -> FfiFuture<FfiUnitResult>;
    fn start(&self) -> FfiFuture<FfiUnitResult>;
    fn stop(&self) -> FfiFuture<FfiUnitResult>;
    /// Hot reload, old instance: state to hand to the new one (`None`: nothing).
    fn export_state(&self) -> FfiFuture<RResult<ROption<RVec<u8>>, RString>>;
    /// Hot reload, new instance (after its `init`): the old instance's state.
    #[sabi(last_prefix_field)]
    fn import_state(&self, state: RVec<u8>) -> FfiFuture<FfiUnitResult>;
}

/// Owned module object.
pub type FfiModuleBox = FfiModule_TO<'static, RBox<()>>;

/// The root module every module library exports (see [`crate::export_module!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ModuleRootRef)))]
#[sabi(missing_field(panic))]
pub struct ModuleRoot {
    /// Create the module instance. Panics in the module's constructor become `Err`.
    #[sabi(last_prefix_field)]
    pub new_module: extern "C" fn() -> RResult<FfiModuleBox, RString>,
}

impl RootModule for ModuleRootRef {
    declare_root_module_statics! {ModuleRootRef}
    const BASE_NAME: &'static str = "modhost_module";
    const NAME: &'static str = "modhost_module";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The version of this crate, i.e. of the ABI contract, as `major.minor.patch`.
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Kinds of [`FfiDbError`].
pub mod db_error {
    /// The database cannot be reached right now.
    pub const UNAVAILABLE: u8 = 1;
    /// A constraint (unique, foreign key, not null, check) was violated.
    pub const CONSTRAINT: u8 = 2;
    /// The database refused access (e.g. another module's data).
    pub const DENIED: u8 = 3;
    /// Any other error in the statement or its parameters.
    pub const QUERY: u8 = 4;
    /// The transaction was already committed or rolled back.
    pub const CLOSED: u8 = 5;
}

/// Kinds of [`FfiCallError`].
pub mod call_error {
    /// No such service, or the caller may not call it.
    pub const NOT_ALLOWED: u8 = 1;
    /// The provider is not running.
    pub const UNAVAILABLE: u8 = 2;
    /// The call did not finish in time.
    pub const TIMEOUT: u8 = 3;
    /// The request was invalid (bad JSON, missing fields).
    pub const BAD_REQUEST: u8 = 4;
    /// The provider failed.
    pub const FAILED: u8 = 5;
    /// The requested item does not exist.
    pub const NOT_FOUND: u8 = 6;
}

/// Log levels as carried by [`FfiHost::log`].
pub mod level {
    pub const OFF: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}
