//! [`WorkerModule`]: an isolated module as the runtime sees it, an `FfiModule` whose
//! entry points start a worker and call it. `init` starts the worker and has it load the
//! library and run the module's own `init`; `stop` runs the module's `stop` and ends the
//! worker. Dropping the instance ends the worker too, so none outlives its module.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use abi_stable::std_types::{ROption, RResult, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    FfiInitContext, FfiModule, FfiModuleBox, FfiModule_TO, FfiUnitResult,
};

use crate::data::database::AreaAccess;
use crate::isolation::{
    convert,
    link::{LinkError, WorkerLink},
    proxies::Deadlines,
    settings::WorkerLimits,
    slot::WorkerSlot,
    spawn::{self, Launch},
    ExitSender,
};
use crate::wire::module_v1::{self as pb, worker_client::WorkerClient};
use tonic::transport::Channel;

/// Everything needed to run one isolated module instance.
pub struct WorkerSpec {
    pub module: String,
    /// The `modhost` executable (the worker is `modhost worker`).
    pub program: PathBuf,
    /// Private directory for the two sockets.
    pub dir: PathBuf,
    /// Private writable scratch directory (`TMPDIR`).
    pub scratch: PathBuf,
    /// The runtime copy of the verified library.
    pub library: PathBuf,
    pub module_dir: PathBuf,
    pub database: AreaAccess,
    pub limits: WorkerLimits,
    pub deadlines: Deadlines,
    /// The module's current worker (the runtime switches it when an instance goes live).
    pub slot: Arc<WorkerSlot>,
    /// The largest message either side accepts.
    pub message_limit: usize,
    /// Deadline of `init`, `start`, `stop` and the state hand-off.
    pub entry_deadline: Duration,
    pub exits: ExitSender,
}

/// What the runtime learns about a worker instance.
#[derive(Default)]
pub struct WorkerState {
    link: OnceLock<Arc<WorkerLink>>,
    plugin_api_version: OnceLock<String>,
    sandbox: OnceLock<String>,
}

impl WorkerState {
    /// The worker, once `init` started it.
    pub fn link(&self) -> Option<&Arc<WorkerLink>> {
        self.link.get()
    }

    /// The plugin-api version the library was built against, once loaded.
    pub fn plugin_api_version(&self) -> Option<&str> {
        self.plugin_api_version.get().map(String::as_str)
    }

    /// What the worker's sandbox enforces.
    pub fn sandbox(&self) -> Option<&str> {
        self.sandbox.get().map(String::as_str)
    }
}

/// An isolated module instance.
pub struct WorkerModule {
    spec: Arc<WorkerSpec>,
    state: Arc<WorkerState>,
}

impl WorkerModule {
    /// A new instance (no process yet) and a view of its state for the runtime.
    pub fn create(spec: WorkerSpec) -> (FfiModuleBox, Arc<WorkerState>) {
        let state = Arc::new(WorkerState::default());
        let module = WorkerModule {
            spec: Arc::new(spec),
            state: state.clone(),
        };
        (
            FfiModule_TO::from_value(module, abi_stable::sabi_trait::TD_Opaque),
            state,
        )
    }

    /// Runs one of the module's entry points in the worker, with the entry deadline.
    fn entry_point<F, Fut>(&self, what: &'static str, call: F) -> FfiFuture<FfiUnitResult>
    where
        F: FnOnce(WorkerClient<Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<tonic::Response<pb::Outcome>, tonic::Status>>
            + Send
            + 'static,
    {
        let (link, deadline) = (self.link(), self.spec.entry_deadline);
        async move {
            let link = match link {
                Ok(link) => link,
                Err(e) => return RResult::RErr(e),
            };
            match link.run(deadline, what, call).await {
                Ok(outcome) => convert::from_outcome(outcome),
                Err(e) => RResult::RErr(failed(e)),
            }
        }
        .into_ffi()
    }

    fn link(&self) -> Result<Arc<WorkerLink>, RString> {
        self.state
            .link
            .get()
            .cloned()
            .ok_or_else(|| RString::from("the module's worker process was never started"))
    }
}

impl Drop for WorkerModule {
    fn drop(&mut self) {
        if let Some(link) = self.state.link.get() {
            if link.is_alive() {
                link.retire("its module instance was released");
            }
        }
    }
}

fn failed(e: LinkError) -> RString {
    e.to_string().into()
}

impl FfiModule for WorkerModule {
    fn init(&self, context: FfiInitContext) -> FfiFuture<FfiUnitResult> {
        let (spec, state) = (self.spec.clone(), self.state.clone());
        async move {
            let launch = Launch {
                module: &spec.module,
                program: &spec.program,
                dir: &spec.dir,
                scratch: &spec.scratch,
                limits: &spec.limits,
                deadlines: spec.deadlines,
                slot: spec.slot.clone(),
                message_limit: spec.message_limit,
                ready_within: spec.entry_deadline,
                exits: spec.exits.clone(),
                library: &spec.library,
                module_dir: &spec.module_dir,
                sqlite: match &spec.database {
                    AreaAccess::Sqlite { path, .. } => Some(path),
                    AreaAccess::Postgres { .. } => None,
                },
            };
            let link = match spawn::start(launch, context.host.clone()).await {
                Ok(link) => link,
                Err(why) => return RResult::RErr(why.into()),
            };
            let _ = state.link.set(link.clone());
            let request = pb::InitRequest {
                module_name: context.module_name.into_string(),
                config_json: context.config_json.into_string(),
                database: Some(convert::access_to_wire(&spec.database)),
                max_log_level: context.host.max_log_level().into(),
            };
            let reply = link
                .run(spec.entry_deadline, "init", move |mut c| async move {
                    c.init(request).await
                })
                .await;
            match reply {
                Ok(reply) if reply.ok => {
                    let _ = state.plugin_api_version.set(reply.plugin_api_version);
                    let _ = state.sandbox.set(reply.sandbox);
                    RResult::ROk(())
                }
                Ok(reply) => RResult::RErr(reply.error.into()),
                Err(e) => RResult::RErr(failed(e)),
            }
        }
        .into_ffi()
    }

    fn start(&self) -> FfiFuture<FfiUnitResult> {
        self.entry_point("start", |mut c| async move { c.start(pb::Empty {}).await })
    }

    fn stop(&self) -> FfiFuture<FfiUnitResult> {
        let (link, deadline) = (self.link(), self.spec.entry_deadline);
        async move {
            let link = match link {
                Ok(link) => link,
                Err(e) => return RResult::RErr(e),
            };
            let result = link
                .run(deadline, "stop", |mut c| async move {
                    c.stop(pb::Empty {}).await
                })
                .await;
            link.retire("the module stopped");
            match result {
                Ok(outcome) => convert::from_outcome(outcome),
                // Already gone: there is nothing left to stop.
                Err(LinkError::Down) => RResult::ROk(()),
                Err(e) => RResult::RErr(failed(e)),
            }
        }
        .into_ffi()
    }

    fn export_state(&self) -> FfiFuture<RResult<ROption<RVec<u8>>, RString>> {
        let (link, deadline) = (self.link(), self.spec.entry_deadline);
        async move {
            let link = match link {
                Ok(link) => link,
                Err(e) => return RResult::RErr(e),
            };
            match link
                .run(deadline, "export_state", |mut c| async move {
                    c.export_state(pb::Empty {}).await
                })
                .await
            {
                Ok(reply) if !reply.ok => RResult::RErr(reply.error.into()),
                Ok(reply) if reply.present => RResult::ROk(ROption::RSome(reply.state.into())),
                Ok(_) => RResult::ROk(ROption::RNone),
                Err(e) => RResult::RErr(failed(e)),
            }
        }
        .into_ffi()
    }

    fn import_state(&self, state: RVec<u8>) -> FfiFuture<FfiUnitResult> {
        let state = pb::StateBytes {
            state: state.into_vec(),
        };
        self.entry_point("import_state", move |mut c| async move {
            c.import_state(state).await
        })
    }
}
