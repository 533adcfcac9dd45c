//! `modhost worker`: the process an isolated module runs in.
//!
//! It confines itself (Landlock, see [`sandbox`](super::sandbox)) before it starts a
//! thread, serves the `Worker` service on its socket, and on `Init` loads the library
//! with the host's loader and runs the module's `init` with a [`WorkerHost`]: an
//! `FfiHost` whose methods are calls back to the host (`ModuleHost`), except the
//! database, which the worker opens itself with the module's own credentials, and the
//! timer. Logs go to stderr as JSON lines, which the host re-logs under the module.

use std::{
    collections::HashMap,
    io::Write as _,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::FutureExt as _;
use hyper_util::rt::TokioIo;
use modhost_plugin_api::ffi::{
    call_error, level, FfiCallError, FfiDatabaseBox, FfiEventHandlerBox, FfiHandlerBox, FfiHost,
    FfiHostBox, FfiHost_TO, FfiInitContext, FfiModuleBox, FfiRequestView, FfiRequestView_TO,
    FfiResponse, FfiRoute, FfiServiceHandlerBox, FfiUnitResult, FfiUser,
};
use tonic::{
    transport::{Channel, Endpoint, Server},
    Request, Response, Status,
};

use crate::data::db_handle::AreaDatabase;
use crate::isolation::{convert, sandbox, spawn};
use crate::services::end_user;
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
    install_logging();
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
    let channel = Endpoint::from_static("http://host.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = host_socket.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }),
    );
    let service = WorkerService {
        args: args.clone(),
        sandbox,
        host: ModuleHostClient::new(channel),
        module: OnceLock::new(),
        handlers: Arc::new(Handlers::default()),
    };
    // The host waits for this line before it calls.
    println!("{}", spawn::READY_LINE);
    let _ = std::io::stdout().flush();
    // SIGTERM from the host (the module stopped): exit normally.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| fail(format!("cannot handle SIGTERM: {e}")))?;
    Server::builder()
        .add_service(WorkerServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            async move {
                terminate.recv().await;
            },
        )
        .await
        .map_err(|e| fail(format!("its server failed: {e}")))
}

/// The module's handlers, by the ids the host knows them by.
#[derive(Default)]
struct Handlers {
    next: std::sync::atomic::AtomicU64,
    routes: RwLock<HashMap<u64, Arc<FfiHandlerBox>>>,
    events: RwLock<HashMap<u64, Arc<FfiEventHandlerBox>>>,
    services: RwLock<HashMap<u64, Arc<FfiServiceHandlerBox>>>,
}

impl Handlers {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

fn get<T>(map: &RwLock<HashMap<u64, Arc<T>>>, id: u64) -> Option<Arc<T>> {
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
}

struct WorkerService {
    args: WorkerArgs,
    sandbox: String,
    host: ModuleHostClient<Channel>,
    module: OnceLock<Arc<FfiModuleBox>>,
    handlers: Arc<Handlers>,
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}

impl WorkerService {
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
            Err(_) => convert::outcome_error("it panicked"),
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
        ok(entry_point(m.start()).await)
    }

    async fn stop(&self, _: Request<pb::Empty>) -> Reply<pb::Outcome> {
        let m = self.instance()?;
        ok(entry_point(m.stop()).await)
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
                error: "it panicked".into(),
                ..Default::default()
            },
        };
        ok(reply)
    }

    async fn import_state(&self, r: Request<pb::StateBytes>) -> Reply<pb::Outcome> {
        let m = self.instance()?;
        ok(entry_point(m.import_state(r.into_inner().state.into())).await)
    }

    async fn handle_route(&self, r: Request<pb::RouteRequest>) -> Reply<pb::RouteResponse> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.routes, r.handler) else {
            return Err(Status::not_found("no such route handler"));
        };
        let user = r.user.clone().map(|u| Arc::new(convert::user_from_wire(u)));
        // As in the host: a request without a token acts for an anonymous user.
        let end = user.clone().or_else(|| Some(anonymous()));
        let request = FfiRequestView_TO::from_value(WireRequest { r, user }, TD_Opaque);
        let call = end_user::scope(end, handler.call(request));
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(response) => ok(convert::response_to_wire(response)),
            Err(_) => ok(convert::response_to_wire(panicked())),
        }
    }

    async fn deliver_event(&self, r: Request<pb::EventDelivery>) -> Reply<pb::Outcome> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.events, r.handler) else {
            return Err(Status::not_found("no such event handler"));
        };
        let event = convert::event_from_wire(r.event.unwrap_or_default());
        ok(entry_point(handler.handle(event)).await)
    }

    async fn call_service(&self, r: Request<pb::ServiceCall>) -> Reply<pb::CallReply> {
        let r = r.into_inner();
        let Some(handler) = get(&self.handlers.services, r.handler) else {
            return Err(Status::not_found("no such service handler"));
        };
        let user = r.user.map(convert::user_from_wire);
        let scope_user = user.clone().map(Arc::new);
        let call = end_user::scope(
            scope_user,
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

async fn entry_point(future: FfiFuture<FfiUnitResult>) -> pb::Outcome {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => convert::outcome(result),
        Err(_) => convert::outcome_error("it panicked"),
    }
}

/// The host's answer to a handler that panicked (as in `http/module_call.rs`).
fn panicked() -> FfiResponse {
    FfiResponse {
        status: 500,
        headers: RVec::from(vec![Tuple2(
            RString::from("content-type"),
            RString::from("application/json"),
        )]),
        body: serde_json::json!({ "error": "the module's handler failed" })
            .to_string()
            .into_bytes()
            .into(),
    }
}

fn anonymous() -> Arc<FfiUser> {
    Arc::new(FfiUser {
        id: RString::new(),
        email: RString::new(),
        permissions: RVec::new(),
    })
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

/// The `FfiHost` a module gets in a worker: calls back to the host.
#[derive(Clone)]
struct WorkerHost {
    host: ModuleHostClient<Channel>,
    handlers: Arc<Handlers>,
    database: AreaDatabase,
    max_level: u8,
}

/// Serialises the worker's stderr lines.
static STDERR: Mutex<()> = Mutex::new(());

fn transport(e: Status) -> FfiCallError {
    convert::unavailable(format!("the host cannot be reached: {}", e.message()))
}

impl WorkerHost {
    fn to_ffi(&self) -> FfiHostBox {
        FfiHost_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }

    /// Makes a registration call to the host and waits for its answer: registrations
    /// happen while `init` runs (synchronously, in plugin-api), and the host's answer
    /// (accepted, or why not) is what the module sees, as in-process.
    fn register<F, Fut>(&self, call: F) -> FfiUnitResult
    where
        F: FnOnce(ModuleHostClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<pb::Outcome>, Status>>,
    {
        let client = self.host.clone();
        let run = || {
            tokio::runtime::Handle::current().block_on(async move {
                match call(client).await {
                    Ok(r) => convert::from_outcome(r.into_inner()),
                    Err(e) => {
                        RResult::RErr(format!("the host cannot be reached: {}", e.message()).into())
                    }
                }
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => RResult::RErr("registrations are only possible during init".into()),
        }
    }
}

impl FfiHost for WorkerHost {
    fn log(&self, lvl: u8, target: RStr<'_>, message: RStr<'_>) {
        if lvl > self.max_level {
            return;
        }
        let line = spawn::log_line(lvl, target.as_str(), message.as_str());
        let _guard = STDERR.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn max_log_level(&self) -> u8 {
        self.max_level
    }

    fn register_route(&self, route: FfiRoute) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(route.handler));
        let registration = pb::RouteRegistration {
            method: route.method.into_string(),
            path: route.path.into_string(),
            permission: route.permission.into_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.register_route(registration).await })
    }

    fn database(&self) -> FfiDatabaseBox {
        self.database.to_ffi()
    }

    fn call(
        &self,
        service: RStr<'_>,
        request: RString,
        timeout_ms: u64,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let call = pb::OutgoingCall {
            service: service.to_string(),
            request: request.into_string(),
            timeout_ms,
            // Read now, while the calling handler runs inside its request.
            user: end_user::current().as_deref().map(convert::user_to_wire),
        };
        let mut client = self.host.clone();
        async move {
            match client.call(call).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn publish(
        &self,
        topic: RStr<'_>,
        payload: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let publication = pb::Publication {
            topic: topic.to_string(),
            payload: payload.into_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.publish(publication).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn subscribe(&self, pattern: RStr<'_>, handler: FfiEventHandlerBox) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .events
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(handler));
        let subscription = pb::Subscription {
            pattern: pattern.to_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.subscribe(subscription).await })
    }

    fn provide(&self, service: RStr<'_>, handler: FfiServiceHandlerBox) -> FfiUnitResult {
        let id = self.handlers.next_id();
        self.handlers
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(handler));
        let provision = pb::Provision {
            service: service.to_string(),
            handler: id,
        };
        self.register(|mut c| async move { c.provide(provision).await })
    }

    fn cache_get(&self, key: RStr<'_>) -> FfiFuture<RResult<ROption<RVec<u8>>, FfiCallError>> {
        let key = pb::CacheKey {
            key: key.to_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_get(key).await {
                Ok(reply) => {
                    let v = reply.into_inner();
                    match v.ok {
                        true if v.present => RResult::ROk(ROption::RSome(v.value.into())),
                        true => RResult::ROk(ROption::RNone),
                        false => RResult::RErr(FfiCallError {
                            kind: u8::try_from(v.error_kind).unwrap_or(call_error::FAILED),
                            message: v.error.into(),
                        }),
                    }
                }
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn cache_set(
        &self,
        key: RStr<'_>,
        value: RVec<u8>,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<(), FfiCallError>> {
        let entry = pb::CacheEntry {
            key: key.to_string(),
            value: value.into_vec(),
            ttl_ms,
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_set(entry).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()).map(|_| ()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn cache_delete(&self, key: RStr<'_>) -> FfiFuture<RResult<(), FfiCallError>> {
        let key = pb::CacheKey {
            key: key.to_string(),
        };
        let mut client = self.host.clone();
        async move {
            match client.cache_delete(key).await {
                Ok(reply) => convert::from_call_reply(reply.into_inner()).map(|_| ()),
                Err(e) => RResult::RErr(transport(e)),
            }
        }
        .into_ffi()
    }

    fn sleep(&self, ms: u64) -> FfiFuture<()> {
        async move { tokio::time::sleep(Duration::from_millis(ms)).await }.into_ffi()
    }

    fn describe_route(&self, method: RStr<'_>, path: RStr<'_>, doc_json: RString) -> FfiUnitResult {
        let description = pb::RouteDescription {
            method: method.to_string(),
            path: path.to_string(),
            doc_json: doc_json.into_string(),
        };
        self.register(|mut c| async move { c.describe_route(description).await })
    }

    fn describe_event(&self, topic: RStr<'_>, schema_json: RString) -> FfiUnitResult {
        let description = pb::EventDescription {
            topic: topic.to_string(),
            schema_json: schema_json.into_string(),
        };
        self.register(|mut c| async move { c.describe_event(description).await })
    }
}

/// The worker's own log events (the database's errors, say), written to stderr in the
/// line format the host re-logs.
struct StderrLines;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StderrLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                match field.name() {
                    "message" => {
                        let _ = write!(self.0, "{value:?}");
                    }
                    name => {
                        let _ = write!(self.0, " {name}={value:?}");
                    }
                }
            }
        }
        let meta = event.metadata();
        let lvl = match *meta.level() {
            tracing::Level::ERROR => level::ERROR,
            tracing::Level::WARN => level::WARN,
            tracing::Level::INFO => level::INFO,
            tracing::Level::DEBUG => level::DEBUG,
            tracing::Level::TRACE => level::TRACE,
        };
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let line = spawn::log_line(lvl, meta.target(), &fields.0);
        let _guard = STDERR.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// Installs [`StderrLines`] at info level for the worker's own code.
fn install_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let subscriber = tracing_subscriber::registry()
        .with(StderrLines)
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
