//! The permission registry: every permission the core and the running modules declared,
//! and which module declared it. Grants and checks are validated against it.

use std::collections::BTreeMap;

/// Declared permissions, by name, with the module that declared each.
#[derive(Debug, Default, Clone)]
pub struct PermissionRegistry {
    by_name: BTreeMap<String, String>,
}

/// A permission declared twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission `{permission}` is declared by both `{first}` and `{second}`")]
pub struct DuplicatePermission {
    pub permission: String,
    pub first: String,
    pub second: String,
}

impl PermissionRegistry {
    /// Registers `module`'s permissions; nothing is registered if one is already taken.
    pub fn register(
        &mut self,
        module: &str,
        permissions: impl IntoIterator<Item = String>,
    ) -> Result<(), DuplicatePermission> {
        let permissions: Vec<String> = permissions.into_iter().collect();
        for p in &permissions {
            if let Some(first) = self.by_name.get(p).filter(|owner| *owner != module) {
                return Err(DuplicatePermission {
                    permission: p.clone(),
                    first: first.clone(),
                    second: module.to_string(),
                });
            }
        }
        for p in permissions {
            self.by_name.insert(p, module.to_string());
        }
        Ok(())
    }

    /// Whether `permission` was declared.
    pub fn contains(&self, permission: &str) -> bool {
        self.by_name.contains_key(permission)
    }

    /// All permissions, by module.
    pub fn by_module(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, m) in &self.by_name {
            out.entry(m.clone()).or_default().push(p.clone());
        }
        out
    }

    /// Checks a grant pattern: a declared permission, `*`, or `<module>.*` /
    /// `<module>.<resource>.*` (any segments in lower snake case).
    pub fn validate_grant(&self, pattern: &str) -> Result<(), String> {
        if pattern == "*" || self.contains(pattern) {
            return Ok(());
        }
        let snake = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if let Some(prefix) = pattern.strip_suffix(".*") {
            let segs: Vec<&str> = prefix.split('.').collect();
            if (1..=2).contains(&segs.len()) && segs.iter().all(|s| snake(s)) {
                return Ok(());
            }
        }
        Err(format!(
            "`{pattern}` is neither a declared permission nor a pattern (`*`, `module.*`, `module.resource.*`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_name_both_modules() {
        let mut r = PermissionRegistry::default();
        r.register("blog", vec!["blog.post.read".into()]).unwrap();
        let err = r
            .register("evil", vec!["blog.post.read".into()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission `blog.post.read` is declared by both `blog` and `evil`"
        );
        assert!(!r.by_module().contains_key("evil"));
    }

    #[test]
    fn grant_patterns() {
        let mut r = PermissionRegistry::default();
        r.register("blog", vec!["blog.post.read".into()]).unwrap();
        for ok in ["*", "blog.*", "blog.post.*", "blog.post.read", "billing.*"] {
            assert!(r.validate_grant(ok).is_ok(), "{ok}");
        }
        for bad in [
            "blog.post.publish",
            "blog*",
            "*.read",
            "Blog.*",
            "a.b.c.*",
            "",
        ] {
            assert!(r.validate_grant(bad).is_err(), "{bad}");
        }
    }
}
