//! The host's connection to one worker process: its gRPC client, whether it is alive,
//! and the means to kill it. Every call into the module's code goes through here, with
//! a deadline past which the worker is killed (a handler that never yields cannot be
//! stopped any other way).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use modhost_plugin_api::ffi::FfiUser;

use tonic::transport::Channel;

use crate::wire::module_v1::worker_client::WorkerClient;

/// Why a call into the worker got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The worker is not running (crashed, restarting or stopped).
    Down,
    /// It did not answer within its deadline and was killed.
    Killed(Duration),
    /// The connection broke during the call (the worker died).
    Broken(String),
    /// The module's handler panicked (the worker caught it).
    Panicked,
    /// The worker answered with an error of the protocol (a message over the size
    /// limit, say): retrying will not help.
    Failed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Down => write!(f, "the module's worker process is not running"),
            LinkError::Killed(d) => write!(
                f,
                "the module's code did not answer within {d:?}; its worker process was killed"
            ),
            LinkError::Broken(why) => write!(f, "the module's worker process failed: {why}"),
            LinkError::Panicked => write!(f, "the module's handler panicked"),
            LinkError::Failed(why) => write!(f, "the call into the module's worker failed: {why}"),
        }
    }
}

/// How long after a call's deadline a worker still busy with it is killed.
const KILL_GRACE: Duration = Duration::from_millis(100);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One worker, as the host sees it.
pub struct WorkerLink {
    id: u64,
    module: String,
    client: WorkerClient<Channel>,
    pid: AtomicU32,
    alive: AtomicBool,
    /// Set when the host ends the worker on purpose: its exit is not a crash.
    retiring: AtomicBool,
    /// Asks the supervisor to kill the process, with the reason.
    kill: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// The end users of the requests and service calls running in the worker, by the
    /// call ids the worker names them by when it calls back.
    calls: Mutex<HashMap<u64, Option<Arc<FfiUser>>>>,
    next_call: AtomicU64,
    /// The worker's event handlers, by subscription pattern.
    events: Mutex<HashMap<String, u64>>,
}

/// A request or service call running in the worker: its end user is known to the host
/// under [`InFlight::id`] until it is dropped.
pub struct InFlight {
    link: Arc<WorkerLink>,
    id: u64,
}

impl InFlight {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.link
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl WorkerLink {
    pub(crate) fn new(
        module: &str,
        client: WorkerClient<Channel>,
        kill: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            module: module.to_string(),
            client,
            pid: AtomicU32::new(0),
            alive: AtomicBool::new(true),
            retiring: AtomicBool::new(false),
            kill: Mutex::new(Some(kill)),
            calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Records the worker's handler for subscription `pattern`.
    pub fn add_event_handler(&self, pattern: &str, handler: u64) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pattern.to_string(), handler);
    }

    /// The worker's handler for subscription `pattern`.
    pub fn event_handler(&self, pattern: &str) -> Option<u64> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pattern)
            .copied()
    }

    /// Records a call into the worker made for `user`, until the guard is dropped.
    pub fn enter(self: &Arc<Self>, user: Option<Arc<FfiUser>>) -> InFlight {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, user);
        InFlight {
            link: self.clone(),
            id,
        }
    }

    /// The end user of the call `id` running in the worker; `None` for an unknown id
    /// (0, a finished call, or one the worker made up).
    pub fn user_of(&self, id: u64) -> Option<Arc<FfiUser>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .flatten()
    }

    /// Unique among this host's workers.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    /// The worker's process id (0 before it started).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub(crate) fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Called by the supervisor once the process has exited.
    pub(crate) fn mark_exited(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.kill.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether the host ended this worker on purpose.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// Kills the worker; `reason` becomes its exit reason.
    pub fn kill(&self, reason: &str) {
        if let Some(tx) = self.kill.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(reason.to_string());
        }
    }

    /// Ends the worker on purpose (after its `stop`, or when its instance is dropped):
    /// its exit is not reported as a crash.
    pub fn retire(&self, reason: &str) {
        self.retiring.store(true, Ordering::SeqCst);
        self.kill(reason);
    }

    /// A client for one call.
    pub fn client(&self) -> WorkerClient<Channel> {
        self.client.clone()
    }

    /// Runs `call` (one RPC into the module's code) on its own task with `deadline`: past
    /// it, the worker is killed, even if the caller stopped waiting (a request whose
    /// client went away still ends a handler that spins).
    pub async fn run<T, F, Fut>(
        self: &Arc<Self>,
        deadline: Duration,
        what: &'static str,
        call: F,
    ) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce(WorkerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
    {
        if !self.is_alive() {
            return Err(LinkError::Down);
        }
        let future = call(self.client());
        let link = self.clone();
        let task = tokio::spawn(async move {
            // The host answers first (504, a failed attempt), at its own deadline, as
            // for an in-process module; the worker is killed just after if still busy.
            match tokio::time::timeout(deadline + KILL_GRACE, future).await {
                Ok(Ok(reply)) => Ok(reply.into_inner()),
                Ok(Err(status)) if !link.is_alive() || is_transport(&status) => {
                    Err(LinkError::Broken(status.message().to_string()))
                }
                Ok(Err(status))
                    if status.code() == tonic::Code::Aborted
                        && status.message() == crate::isolation::spawn::HANDLER_PANICKED =>
                {
                    Err(LinkError::Panicked)
                }
                Ok(Err(status)) => Err(LinkError::Failed(status.message().to_string())),
                Err(_) => {
                    tracing::error!(module = %link.module, pid = link.pid(), call = what, ?deadline, "the module's code did not answer in time; killing its worker");
                    link.kill(&format!("{what} did not answer within {deadline:?}"));
                    Err(LinkError::Killed(deadline))
                }
            }
        });
        task.await
            .unwrap_or_else(|e| Err(LinkError::Broken(e.to_string())))
    }
}

fn is_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}
