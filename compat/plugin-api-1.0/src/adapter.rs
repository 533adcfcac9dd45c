//! Adapters from the plain-Rust SDK traits to the FFI traits of [`crate::ffi`].
//!
//! Every body here only builds a future; user code runs inside `FfiFuture::poll`, which
//! catches panics, so no panic can unwind through an `extern "C"` frame.

use std::{future::Future, marker::PhantomData, sync::Arc};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RString, RVec, Tuple2},
};
use async_ffi::{FfiFuture, FutureExt as _};

use crate::{
    ffi::{
        FfiHandler, FfiInitContext, FfiModule, FfiModuleBox, FfiModule_TO, FfiRequest, FfiResponse,
        FfiUnitResult, ModuleRoot, ModuleRootRef,
    },
    logging, InitContext, IntoResponse, Module, Request, Result,
};

fn to_ffi(result: Result<()>) -> FfiUnitResult {
    match result {
        Ok(()) => RResult::ROk(()),
        Err(e) => RResult::RErr(e.message().into()),
    }
}

/// Wraps a user module.
pub(crate) struct ModuleAdapter<M>(Arc<M>);

impl<M: Module> FfiModule for ModuleAdapter<M> {
    fn init(&self, context: FfiInitContext) -> FfiFuture<FfiUnitResult> {
        let module = Arc::clone(&self.0);
        async move {
            logging::install(&context.host);
            let mut ctx = match InitContext::from_ffi(context) {
                Ok(ctx) => ctx,
                Err(e) => return to_ffi(Err(e)),
            };
            to_ffi(module.init(&mut ctx).await)
        }
        .into_ffi()
    }

    fn start(&self) -> FfiFuture<FfiUnitResult> {
        let module = Arc::clone(&self.0);
        async move { to_ffi(module.start().await) }.into_ffi()
    }

    fn stop(&self) -> FfiFuture<FfiUnitResult> {
        let module = Arc::clone(&self.0);
        async move { to_ffi(module.stop().await) }.into_ffi()
    }

    fn export_state(&self) -> FfiFuture<RResult<ROption<RVec<u8>>, RString>> {
        let module = Arc::clone(&self.0);
        async move {
            match module.export_state().await {
                Ok(state) => RResult::ROk(state.map(RVec::from).into()),
                Err(e) => RResult::RErr(e.message().into()),
            }
        }
        .into_ffi()
    }

    fn import_state(&self, state: RVec<u8>) -> FfiFuture<FfiUnitResult> {
        let module = Arc::clone(&self.0);
        async move { to_ffi(module.import_state(state.into_vec()).await) }.into_ffi()
    }
}

/// Wraps a user route handler.
pub(crate) struct HandlerAdapter<H, Fut, R> {
    handler: Arc<H>,
    _marker: PhantomData<fn() -> (Fut, R)>,
}

impl<H, Fut, R> HandlerAdapter<H, Fut, R> {
    pub(crate) fn new(handler: Arc<H>) -> Self {
        Self {
            handler,
            _marker: PhantomData,
        }
    }
}

impl<H, Fut, R> FfiHandler for HandlerAdapter<H, Fut, R>
where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse + 'static,
{
    fn call(&self, request: FfiRequest) -> FfiFuture<FfiResponse> {
        let handler = Arc::clone(&self.handler);
        async move {
            let request = Request::from_host(request);
            let response = handler(request).await.into_response();
            FfiResponse {
                status: response.status,
                headers: response
                    .headers
                    .into_iter()
                    .map(|(k, v)| Tuple2(k.into(), v.into()))
                    .collect(),
                body: response.body.into(),
                #[cfg(feature = "__abi_mismatch_for_tests")]
                mismatch: 0,
            }
        }
        .into_ffi()
    }
}

extern "C" fn new_module<M: Module + Default>() -> RResult<FfiModuleBox, RString> {
    match std::panic::catch_unwind(M::default) {
        Ok(module) => RResult::ROk(FfiModule_TO::from_value(
            ModuleAdapter(Arc::new(module)),
            TD_Opaque,
        )),
        Err(payload) => RResult::RErr(
            format!(
                "the module's constructor panicked: {}",
                crate::panic_message(&*payload)
            )
            .into(),
        ),
    }
}

/// Builds the root module for `M`; called by the code [`crate::export_module!`] generates.
pub fn root_module<M: Module + Default>() -> ModuleRootRef {
    ModuleRoot {
        new_module: new_module::<M>,
    }
    .leak_into_prefix()
}
