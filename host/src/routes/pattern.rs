//! Route patterns: `/api/v1/blog/posts/{id}` split into static segments and named
//! parameters, and the one matcher both the core API and module routes use.

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Static(String),
    Param(String),
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

/// Captured path parameters, decoded, in pattern order.
pub type Params = Vec<(String, String)>;

impl Pattern {
    /// Parses an absolute pattern. The error says what is wrong with it.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err("a pattern starts with `/`".into());
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if seg.is_empty() {
                return Err("empty path segment (double or trailing `/`)".into());
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!("invalid parameter name `{name}`"));
                }
                if segments.contains(&Segment::Param(name.to_string())) {
                    return Err(format!("parameter `{name}` appears twice"));
                }
                segments.push(Segment::Param(name.to_string()));
            } else if seg.contains(['{', '}', '?', '#', '%']) {
                return Err(format!("invalid characters in segment `{seg}`"));
            } else {
                segments.push(Segment::Static(seg.to_string()));
            }
        }
        Ok(Pattern { segments })
    }

    /// If `parts` (a request path split at `/`, without the leading empty part)
    /// matches, the number of parameters it binds: fewer means more specific.
    pub fn matches(&self, parts: &[&str]) -> Option<usize> {
        if self.segments.len() != parts.len() {
            return None;
        }
        let mut params = 0;
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Static(s) if s == part => {}
                Segment::Static(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(_) => params += 1,
            }
        }
        Some(params)
    }

    /// The parameters `parts` binds (call after [`Pattern::matches`]), percent-decoded.
    pub fn params(&self, parts: &[&str]) -> Params {
        self.segments
            .iter()
            .zip(parts)
            .filter_map(|(seg, part)| match seg {
                Segment::Param(name) => Some((name.clone(), percent_decode(part))),
                Segment::Static(_) => None,
            })
            .collect()
    }

    /// The parameters' names, in path order.
    pub fn param_names(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(name) => Some(name.as_str()),
                Segment::Static(_) => None,
            })
            .collect()
    }

    /// Whether both patterns match exactly the same paths.
    pub fn same_shape(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Static(a), Segment::Static(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }
}

/// A request path split for [`Pattern::matches`].
pub fn split_path(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

/// Decodes `%XX` escapes in a path segment (invalid escapes are kept as they are; `+`
/// is a plus sign in a path).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_prefers_nothing_and_binds_parameters() {
        let p = Pattern::parse("/api/v1/blog/posts/{id}").unwrap();
        let parts = split_path("/api/v1/blog/posts/a%20b");
        assert_eq!(p.matches(&parts), Some(1));
        assert_eq!(
            p.params(&parts),
            vec![("id".to_string(), "a b".to_string())]
        );
        assert_eq!(p.matches(&split_path("/api/v1/blog/posts/")), None);
        assert_eq!(p.matches(&split_path("/api/v1/blog/posts")), None);
        assert!(p.same_shape(&Pattern::parse("/api/v1/blog/posts/{other}").unwrap()));
        assert!(!p.same_shape(&Pattern::parse("/api/v1/blog/posts/x").unwrap()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["x", "/a//b", "/a/{1x}", "/a/{id}/{id}", "/a/b%20"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_decoding_of_params() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("..%2F..%2Fetc"), "../../etc");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a+b"), "a+b");
    }
}
