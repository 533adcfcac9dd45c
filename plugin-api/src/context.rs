//! [`InitContext`]: what a module receives in `init` (its name, config and routes).

use std::{future::Future, sync::Arc};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult},
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    adapter::HandlerAdapter,
    cache::{Cache, Timer},
    clients::{AuditClient, AuthClient, AuthzClient, CallError, IdentityClient},
    events::{Event, EventAdapter, Events},
    ffi::{
        FfiEventHandler_TO, FfiHandler_TO, FfiHostBox, FfiInitContext, FfiRoute,
        FfiServiceHandler_TO,
    },
    services::{Caller, ServiceAdapter, Services},
    Database, Error, IntoResponse, Method, Request, Result, RouteDoc,
};

/// Handed to [`crate::Module::init`].
pub struct InitContext {
    name: String,
    config: serde_json::Value,
    host: FfiHostBox,
}

impl InitContext {
    pub(crate) fn from_ffi(ctx: FfiInitContext) -> Result<Self> {
        let name = ctx.module_name.into_string();
        let config = serde_json::from_str(ctx.config_json.as_str())
            .map_err(|e| Error::new(format!("module {name}: config from host is not JSON: {e}")))?;
        Ok(Self {
            name,
            config,
            host: ctx.host,
        })
    }

    /// The module's name, as in its `module.yaml`.
    pub fn module_name(&self) -> &str {
        &self.name
    }

    /// The module's config: the manifest's `config:` section merged with the host's
    /// overrides for this module. An empty object when there is none.
    pub fn config_value(&self) -> &serde_json::Value {
        &self.config
    }

    /// The module's config deserialised into `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.config)
            .map_err(|e| Error::new(format!("invalid config for module {}: {e}", self.name)))
    }

    /// The module's own database (see [`Database`]). Clone it into your handlers.
    ///
    /// Tables come from the SQL migrations in the module folder's `migrations/`, which
    /// the host applies before `init` runs.
    pub fn database(&self) -> Database {
        Database::new(self.host.database())
    }

    /// Token validation.
    pub fn auth(&self) -> AuthClient {
        AuthClient {
            host: self.host.clone(),
        }
    }

    /// Read access to users.
    pub fn identity(&self) -> IdentityClient {
        IdentityClient {
            host: self.host.clone(),
        }
    }

    /// Permission checks.
    pub fn authz(&self) -> AuthzClient {
        AuthzClient {
            host: self.host.clone(),
        }
    }

    /// The audit log (this module's entries).
    pub fn audit(&self) -> AuditClient {
        AuditClient {
            host: self.host.clone(),
        }
    }

    /// Publishes events (topics declared under `events.publishes`).
    pub fn events(&self) -> Events {
        Events {
            host: self.host.clone(),
        }
    }

    /// Calls other modules' services (providers must be among your dependencies).
    pub fn services(&self) -> Services {
        Services {
            host: self.host.clone(),
        }
    }

    /// This module's cache namespace.
    pub fn cache(&self) -> Cache {
        Cache {
            host: self.host.clone(),
        }
    }

    /// The host's timer (`timer().sleep(d).await`).
    pub fn timer(&self) -> Timer {
        Timer {
            host: self.host.clone(),
        }
    }

    /// Subscribes `handler` to `pattern` (declared under `events.subscribes`). An `Err`
    /// or a panic makes the host retry the event with backoff, then dead-letter it.
    pub fn subscribe<H, Fut>(&mut self, pattern: &str, handler: H) -> Result<()>
    where
        H: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let handler =
            FfiEventHandler_TO::from_ptr(RArc::new(EventAdapter::new(handler)), TD_Opaque);
        match self.host.subscribe(pattern.into(), handler) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(Error::new(e.into_string())),
        }
    }

    /// Provides `service` (declared under `services`): other modules call it with a
    /// JSON request that deserialises into `Req`; the handler's `Resp` goes back as JSON.
    pub fn provide<H, Req, Resp, Fut>(&mut self, service: &str, handler: H) -> Result<()>
    where
        H: Fn(Caller, Req) -> Fut + Send + Sync + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        Fut: Future<Output = std::result::Result<Resp, CallError>> + Send + 'static,
    {
        let handler =
            FfiServiceHandler_TO::from_ptr(RArc::new(ServiceAdapter::new(handler)), TD_Opaque);
        match self.host.provide(service.into(), handler) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(Error::new(e.into_string())),
        }
    }

    /// Registers an HTTP route.
    ///
    /// `path` must start with `/api/v1/<module name>/` and may hold parameters such as
    /// `{id}`. `permission` is the permission a caller needs: a generated constant
    /// (`permissions::POST_CREATE`, see [`crate::include_permissions!`]) or a string; it
    /// must be declared in module.yaml. The host refuses callers without it (401/403)
    /// unless the manifest lists the route under `public_routes`. The handler receives
    /// the [`Request`] and returns anything that is [`IntoResponse`].
    ///
    /// An out-of-namespace or conflicting route is an error, and the host fails the
    /// module's init even if the error is ignored.
    pub fn route<H, Fut, R>(
        &mut self,
        method: Method,
        path: &str,
        permission: impl AsRef<str>,
        handler: H,
    ) -> Result<()>
    where
        H: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoResponse + 'static,
    {
        let handler = FfiHandler_TO::from_ptr(
            abi_stable::std_types::RArc::new(HandlerAdapter::new(Arc::new(handler))),
            TD_Opaque,
        );
        let route = FfiRoute {
            method: method.as_str().into(),
            path: path.into(),
            permission: permission.as_ref().into(),
            handler,
        };
        match self.host.register_route(route) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(Error::new(e.into_string())),
        }
    }

    /// Describes a route registered with [`InitContext::route`] for the host's
    /// `/openapi.json`: its parameters, request body and responses (since 1.2).
    pub fn describe_route(&mut self, method: Method, path: &str, doc: RouteDoc) -> Result<()> {
        let json = doc.to_json().to_string();
        match self
            .host
            .describe_route(method.as_str().into(), path.into(), json.into())
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(Error::new(e.into_string())),
        }
    }

    /// The JSON Schema of the payload of `topic` (declared under `events.publishes`),
    /// shown in `/openapi.json` under `x-events` (since 1.2).
    pub fn describe_event(&mut self, topic: &str, schema: serde_json::Value) -> Result<()> {
        match self
            .host
            .describe_event(topic.into(), schema.to_string().into())
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(Error::new(e.into_string())),
        }
    }
}
