//! `modhost worker`: the process an isolated module runs in, and its `Worker` service.
//!
//! It confines itself (Landlock, see [`sandbox`](super::sandbox)) before it starts a
//! thread, serves `Worker` on its socket, and on `Init` loads the library with the
//! host's loader and runs the module's `init` with a
//! [`WorkerHost`](super::worker_host::WorkerHost). Routes, events and service calls from
//! the host reach the module's handlers by the ids it registered them under. Logs go to
//! stderr ([`worker_log`](super::worker_log)).

use std::{
    io::Write as _,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RStr, Tuple2},
};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use modhost_plugin_api::ffi::{
    call_error, level, FfiInitContext, FfiModuleBox, FfiRequestView, FfiRequestView_TO,
    FfiUnitResult, FfiUser,
};
use tonic::{
    transport::{Channel, Server},
    Request, Response, Status,
};

use crate::data::db_handle::AreaDatabase;
use crate::isolation::{
    convert, sandbox, spawn,
    worker_host::{get, in_call, Handlers, WorkerHost},
    worker_log,
};
use crate::wire::module_v1::{
    self as pb,
    module_host_client::ModuleHostClient,
    worker_server::{Worker, WorkerServer},
};

/// `modhost worker`'s arguments (set by the host).
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub socket_dir: PathBuf,
    pub module: String,
    pub library: PathBuf,
    pub module_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub sqlite: Option<PathBuf>,
    pub landlock: bool,
    /// The largest gRPC message either side accepts.
    pub message_limit: usize,
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker for `{module}`: {why}")]
    Setup { module: String, why: String },
}

/// Runs the worker until the host kills it (or dies: the worker dies with it).
pub fn run(args: WorkerArgs) -> Result<(), WorkerError> {
    let fail = |why: String| WorkerError::Setup {
        module: args.module.clone(),
        why,
    };
    worker_log::install_logging();
    let sandbox = match args.landlock {
        false => "landlock: off (worker_landlock = false)".to_string(),
        true => {
            let mut files = Vec::new();
            if let Some(db) = &args.sqlite {
                files = sandbox::sqlite_files(db);
            }
            let paths = sandbox::SandboxPaths {
                module_dir: args.module_dir.clone(),
                library: args.library.clone(),
                private: vec![args.socket_dir.clone(), args.scratch_dir.clone()],
                files,
            };
            sandbox::restrict(&paths).map_err(fail)?
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start its runtime: {e}")))?;
    runtime.block_on(serve(args, sandbox))
}

async fn serve(args: WorkerArgs, sandbox: String) -> Result<(), WorkerError> {
    let fail = |why: String| WorkerError::Setup {
        module: args.module.clone(),
        why,
    };
    let listener = tokio::net::UnixListener::bind(args.socket_dir.join(spawn::WORKER_SOCKET))
        .map_err(|e| {
            fail(format!(
                "cannot listen in {}: {e}",
                args.socket_dir.display()
            ))
        })?;
    let host_socket = args.socket_dir.join(spawn::HOST_SOCKET);
    let channel = spawn::unix_channel(host_socket);
    let limit = args.message_limit;
    let service = WorkerService {
        args: args.clone(),
        sandbox,
        host: ModuleHostClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        module: OnceLock::new(),
        handlers: Arc::new(Handlers::default()),
        last_panic: Arc::default(),
    };
    // The host waits for this line before it calls.
    println!("{}", spawn::READY_LINE);
    let _ = std::io::stdout().flush();
    // SIGTERM from the host (the module stopped): exit normally.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| fail(format!("cannot handle SIGTERM: {e}")))?;
    Server::builder()
        .add_service(
            WorkerServer::new(service)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(
            // Only the host (this worker's parent) may call it.
            spawn::only_from(listener, std::os::unix::process::parent_id),
            async move {
                terminate.recv().await;
            },
        )
        .await
        .map_err(|e| fail(format!("its server failed: {e}")))
}

struct WorkerService {
    args: WorkerArgs,
    sandbox: String,
    host: ModuleHostClient<Channel>,
    module: OnceLock<Arc<FfiModuleBox>>,
    handlers: Arc<Handlers>,
    /// The last panic message the module forwarded (shared with its `WorkerHost`).
    last_panic: Arc<std::sync::Mutex<Option<String>>>,
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

impl WorkerService {
    /// "it panicked", with the module's panic message when it forwarded one (as the
    /// host says of an in-process module).
    fn panicked(&self) -> String {
        match self
            .last_panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(message) => format!("it panicked: {message}"),
            None => "it panicked".to_string(),
        }
    }

    async fn entry_point(&self, future: FfiFuture<FfiUnitResult>) -> pb::Outcome {
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(result) => convert::outcome(result),
            Err(_) => convert::outcome_error(self.panicked()),
        }
    }

    fn instance(&self) -> Result<Arc<FfiModuleBox>, Status> {
        self.module
            .get()
            .cloned()
            .ok_or_else(|| Status::failed_precondition("the module is not initialised"))
    }

    async fn init_module(
        &self,
        request: pb::InitRequest,
    ) -> Result<(FfiModuleBox, String, WorkerHost), String> {
        let (library, module) = (self.args.library.clone(), self.args.module.clone());
        let (root, version) = tokio::task::spawn_blocking(move || {
            crate::module::loader::load_copy(&library, &module)
        })
        .await
        .map_err(|e| format!("loading the library failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let instance = match (root.new_module())() {
            RResult::ROk(m) => m,
            RResult::RErr(e) => return Err(e.into_string()),
        };
        let access = request
            .database
            .and_then(convert::access_from_wire)
            .ok_or("the host sent no database access")?;
        let pool = access.open();
        let database = AreaDatabase::new(&self.args.module, pool);
        // Connect now, while the host's migration connection keeps SQLite's files: this
        // connection then keeps them for the worker's life.
        if let Err(e) = database.exec("SELECT 1", Vec::new()).await {
            return Err(format!("cannot open the module's database: {}", e.message));
        }
        let host = WorkerHost {
            host: self.host.clone(),
            handlers: self.handlers.clone(),
            last_panic: self.last_panic.clone(),
            database,
            max_level: u8::try_from(request.max_log_level).unwrap_or(level::INFO),
        };
        Ok((instance, version, host))
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn init(&self, r: Request<pb::InitRequest>) -> Reply<pb::InitReply> {
        let r = r.into_inner();
        let context_name = r.module_name.clone();
        let config_json = r.config_json.clone();
        let (instance, version, host) = match self.init_module(r).await {
            Ok(found) => found,
            Err(error) => {
                return ok(pb::InitReply {
                    ok: false,
                    error,
                    ..Default::default()
                })
            }
        };
        let context = FfiInitContext {
            module_name: context_name.into(),
            config_json: config_json.into(),
            host: host.to_ffi(),
        };
        let result = AssertUnwindSafe(instance.init(context))
            .catch_unwind()
            .await;
        let outcome = match result {
            Ok(r) => convert::outcome(r),
            Err(_) => convert::outcome_error(self.panicked()),
        };
        if outcome.ok && self.module.set(Arc::new(instance)).is_err() {
            return ok(pb::InitReply {
                ok: false,
                error: "init was called twice".into(),
                ..Default::default()
            });
        }
        ok(pb::InitReply {
            ok: outcome.ok,
            error: outcome.error,
            plugin_api_version: version,
            sandbox: self.sandbox.clone(),
        })
    }

    async fn start(&self, _: Request<pb::Empty>) -> Reply<pb::Outcome> {
        let m = self.instance()?;
        ok(self.entry_point(m.start()).await)
    }

    async fn stop(&self, _: Request<pb::Empty>) -> Reply<pb::Outcome> {
        let m = self.instance()?;
        ok(self.entry_point(m.stop()).await)
    }

    async fn export_state(&self, _: Request<pb::Empty>) -> Reply<pb::ExportReply> {
        let m = self.instance()?;
        let reply = match AssertUnwindSafe(m.export_state()).catch_unwind().await {
            Ok(RResult::ROk(ROption::RSome(state))) => pb::ExportReply {
                ok: true,
                present: true,
                state: state.into_vec(),
                ..Default::default()
            },
            Ok(RResult::ROk(ROption::RNone)) => pb::ExportReply {
                ok: true,
                ..Default::default()
            },
            Ok(RResult::RErr(e)) => pb::ExportReply {
                error: e.into_string(),
                ..Default::default()
            },
            Err(_) => pb::ExportReply {
                error: self.panicked(),
                ..Default::default()
            },
        };
        ok(reply)
    }

    async fn import_state(&self, r: Request<pb::StateBytes>) -> Reply<pb::Outcome> {
        let m = self.instance()?;
        ok(self
            .entry_point(m.import_state(r.into_inner().state.into()))
            .await)
    }

    async fn handle_route(&self, r: Request<pb::RouteRequest>) -> Reply<pb::RouteResponse> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.routes, r.handler) else {
            return Err(Status::not_found("no such route handler"));
        };
        let user = r.user.clone().map(|u| Arc::new(convert::user_from_wire(u)));
        let id = r.call;
        let request = FfiRequestView_TO::from_value(WireRequest { r, user }, TD_Opaque);
        let call = in_call(id, handler.call(request));
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(response) => ok(convert::response_to_wire(response)),
            // The host answers as for a panic in-process (500, counted, logged).
            Err(_) => Err(Status::aborted(spawn::HANDLER_PANICKED)),
        }
    }

    async fn deliver_event(&self, r: Request<pb::EventDelivery>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.events, r.handler) else {
            return Err(Status::not_found("no such event handler"));
        };
        let event = convert::event_from_wire(r.event.unwrap_or_default());
        ok(self.entry_point(handler.handle(event)).await)
    }

    async fn call_service(&self, r: Request<pb::ServiceCall>) -> Reply<pb::CallReply> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.services, r.handler) else {
            return Err(Status::not_found("no such service handler"));
        };
        let user = r.user.map(convert::user_from_wire);
        let call = in_call(
            r.call,
            handler.call_as(r.caller.into(), user.into(), r.request.into()),
        );
        let reply = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => convert::call_reply(result),
            Err(_) => convert::call_reply_error(
                call_error::FAILED,
                "the provider's handler failed".into(),
            ),
        };
        ok(reply)
    }
}

/// A request as it arrived over the wire, lent to the handler through accessors.
struct WireRequest {
    r: pb::RouteRequest,
    user: Option<Arc<FfiUser>>,
}

impl FfiRequestView for WireRequest {
    fn method(&self) -> RStr<'_> {
        self.r.method.as_str().into()
    }

    fn path(&self) -> RStr<'_> {
        self.r.path.as_str().into()
    }

    fn query(&self) -> RStr<'_> {
        self.r.query.as_str().into()
    }

    fn param(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RStr<'_>>> {
        self.r
            .params
            .get(index)
            .map(|p| {
                let value = std::str::from_utf8(&p.value).unwrap_or("");
                Tuple2(p.name.as_str().into(), value.into())
            })
            .into()
    }

    fn header(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RSlice<'_, u8>>> {
        self.r
            .headers
            .get(index)
            .map(|h| Tuple2(h.name.as_str().into(), h.value.as_slice().into()))
            .into()
    }

    fn body(&self) -> RSlice<'_, u8> {
        self.r.body.as_slice().into()
    }

    fn user(&self) -> ROption<FfiUser> {
        self.user.as_deref().cloned().into()
    }
}
