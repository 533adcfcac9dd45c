//! The end user a service call is made for.
//!
//! A module's route handler runs inside [`scope`] with the request's user; a call it
//! makes to another module's service picks that user up with [`current`] and hands it to
//! the provider (`Caller::user` in the SDK), which can then check what the *user* may
//! see, not only what the calling module may call. The provider's own calls run in the
//! same scope, so the user follows a chain of calls. Nothing outside a request (event
//! handlers, `start`) has a user.

use std::{future::Future, sync::Arc};

use modhost_plugin_api::ffi::FfiUser;

tokio::task_local! {
    static END_USER: Option<Arc<FfiUser>>;
}

/// Runs `future` on behalf of `user`.
pub fn scope<F: Future>(user: Option<Arc<FfiUser>>, future: F) -> impl Future<Output = F::Output> {
    END_USER.scope(user, future)
}

/// The user the running code acts for, if it runs inside a request.
pub fn current() -> Option<Arc<FfiUser>> {
    END_USER.try_with(Clone::clone).ok().flatten()
}
