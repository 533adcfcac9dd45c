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
    /// Whether the user holds `permission` (wildcards as in
    /// [`crate::permission_matches`]).
    pub fn has(&self, permission: impl AsRef<str>) -> bool {
        self.permissions
            .iter()
            .any(|p| permission_matches(p, permission.as_ref()))
    }
}
