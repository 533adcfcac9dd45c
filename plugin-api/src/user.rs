//! [`User`]: the authenticated caller of a request.

use crate::permission::permission_matches;

/// The caller of a request, as authenticated by the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub id: String,
    pub email: String,
    /// Granted permissions and patterns (`blog.post.read`, `blog.*`, `*`).
    pub permissions: Vec<String>,
}

impl User {
    pub(crate) fn from_ffi(u: crate::ffi::FfiUser) -> Self {
        Self {
            id: u.id.into_string(),
            email: u.email.into_string(),
            permissions: u.permissions.into_iter().map(|p| p.into_string()).collect(),
        }
    }

    /// Whether this is the anonymous user of a request without a token (an empty id,
    /// no permissions), as a service provider may see it in [`crate::Caller::user`].
    pub fn is_anonymous(&self) -> bool {
        self.id.is_empty()
    }

    /// Whether the user holds `permission` (wildcards as in
    /// [`crate::permission_matches`]).
    pub fn has(&self, permission: impl AsRef<str>) -> bool {
        self.permissions
            .iter()
            .any(|p| permission_matches(p, permission.as_ref()))
    }
}
