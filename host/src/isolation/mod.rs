//! Isolated modules: a module's library running in a worker process of its own
//! (`modhost worker`), so that its segfault, abort, stack overflow, runaway allocation
//! or endless loop ends that process and not the host.
//!
//! The worker loads the same library with the same loader, and gives it an `FfiHost`
//! whose methods are gRPC calls back to the host (`proto/modhost/module/v1`): the module
//! cannot tell it is isolated. In the host, the module is a [`WorkerModule`](remote_module::WorkerModule), an
//! `FfiModule` whose routes, event handlers and services are proxies to the worker, so
//! the runtime runs, reloads and stops it like any other module.
//!
//! - [`settings`]: the operator's choice per module, and the limits;
//! - host side: [`spawn`] (the child process, its limits, its log lines and its exit),
//!   [`link`] (the connection to one worker), [`slot`] (a module's current worker),
//!   [`remote_module`] (the `FfiModule`),
//!   [`proxies`] (routes, events, services), [`callbacks`] (the `ModuleHost` service the
//!   worker calls), [`convert`] (FFI ⇄ wire types);
//! - worker side: [`worker`] (the process and its `Worker` service), [`worker_host`]
//!   (the module's `FfiHost` there), [`worker_log`] (its log lines) and [`sandbox`]
//!   (Landlock).
//!
//! May use: `module` (the loader), `data` (the module's database), `services::end_user`,
//! `wire`. Not `runtime` or `http`: the runtime hears of a worker's exit through
//! [`WorkerExit`] messages.

pub mod callbacks;
pub mod convert;
pub mod link;
pub mod proxies;
pub mod remote_module;
pub mod sandbox;
pub mod settings;
pub mod slot;
pub mod spawn;
pub mod worker;
pub mod worker_host;
pub mod worker_log;

/// A worker ended without being asked to: the runtime marks its module failed and
/// restarts it.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    pub module: String,
    /// Which worker ([`link::WorkerLink::id`]): an old one's exit after a reload is ignored.
    pub worker: u64,
    /// The signal or exit code, in words.
    pub reason: String,
}

/// Where the runtime hears of workers' exits.
pub type ExitSender = tokio::sync::mpsc::UnboundedSender<WorkerExit>;
