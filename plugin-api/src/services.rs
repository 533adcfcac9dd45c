//! Services between modules: a module provides named services
//! ([`crate::InitContext::provide`]); others call them through the host with
//! [`Services::call`], JSON in and JSON out, with a timeout. A caller must list the
//! provider among its dependencies in `module.yaml`.

use std::{future::Future, marker::PhantomData, sync::Arc, time::Duration};

use abi_stable::std_types::{ROption, RResult, RString};
use async_ffi::{FfiFuture, FutureExt as _};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    clients::{call_json, CallError, CallErrorKind},
    ffi::{FfiCallError, FfiHostBox, FfiServiceHandler, FfiUser},
    User,
};

/// Calls other modules' services. Cheap to clone into handlers.
#[derive(Clone)]
pub struct Services {
    pub(crate) host: FfiHostBox,
}

impl Services {
    /// Calls `service` with `request`; waits at most `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        call_json(&self.host, service, request, timeout).await
    }
}

pub(crate) struct ServiceAdapter<H, Req, Resp, Fut> {
    handler: Arc<H>,
    _marker: PhantomData<fn(Req) -> (Resp, Fut)>,
}

impl<H, Req, Resp, Fut> ServiceAdapter<H, Req, Resp, Fut> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler: Arc::new(handler),
            _marker: PhantomData,
        }
    }
}

/// Who is calling a service. New fields may be added in a minor release.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// The calling module's name.
    pub module: String,
    /// Since 1.1: the end user on whose behalf the call is made; see [`Caller::user`].
    user: Option<User>,
}

impl Caller {
    /// A caller, for a module's own unit tests of a service handler.
    pub fn new(module: impl Into<String>) -> Self {
        Self {
            module: module.into(),
            user: None,
        }
    }

    /// The same caller, acting for `user` (unit tests).
    pub fn with_user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    /// The end user whose request the calling module was handling when it called
    /// (since plugin-api 1.1), with that user's permissions. For a request that carried
    /// no token (a public route) it is an anonymous user: an empty id and no permissions
    /// ([`User::is_anonymous`]). `None` only when the call was not made inside a request
    /// (an event handler, `start`).
    ///
    /// A module calling you is trusted with what *it* may call, not with what its user
    /// may see: when your answer depends on who asks (someone's data, an admin action),
    /// check this user, or you become a confused deputy for every module that depends
    /// on you.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }
}

impl<H, Req, Resp, Fut> FfiServiceHandler for ServiceAdapter<H, Req, Resp, Fut>
where
    H: Fn(Caller, Req) -> Fut + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    Fut: Future<Output = Result<Resp, CallError>> + Send + 'static,
{
    fn call(&self, caller: RString, request: RString) -> FfiFuture<RResult<RString, FfiCallError>> {
        self.call_as(caller, ROption::RNone, request)
    }

    fn call_as(
        &self,
        caller: RString,
        user: ROption<FfiUser>,
        request: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        let handler = Arc::clone(&self.handler);
        async move {
            let request: Req = match serde_json::from_str(request.as_str()) {
                Ok(r) => r,
                Err(e) => {
                    return RResult::RErr(
                        CallError::new(CallErrorKind::BadRequest, format!("invalid request: {e}"))
                            .to_ffi(),
                    )
                }
            };
            let caller = Caller {
                module: caller.into_string(),
                user: user.into_option().map(User::from_ffi),
            };
            match handler(caller, request).await {
                Ok(resp) => match serde_json::to_string(&resp) {
                    Ok(json) => RResult::ROk(json.into()),
                    Err(e) => RResult::RErr(
                        CallError::new(CallErrorKind::Failed, format!("response is not JSON: {e}"))
                            .to_ffi(),
                    ),
                },
                Err(e) => RResult::RErr(e.to_ffi()),
            }
        }
        .into_ffi()
    }
}
