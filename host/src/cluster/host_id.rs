//! This host's id in the cluster: `host_id` if set, otherwise generated once and kept
//! in `data_dir/host_id`, so a restarted host is the same host.

use std::path::Path;

/// Why the id could not be read or kept.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot {what} the host id: {source}; set host_id or check --data-dir")]
pub struct HostIdError {
    path: String,
    what: &'static str,
    source: std::io::Error,
}

/// The configured id, or the one kept in `data_dir`, or a new one (then kept).
pub fn host_id(configured: Option<&str>, data_dir: &Path) -> Result<String, HostIdError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let file = data_dir.join("host_id");
    let fail = |what, source| HostIdError {
        path: file.display().to_string(),
        what,
        source,
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            if let Ok(id) = super::settings::parse_host_id(text.trim()) {
                return Ok(id);
            }
            tracing::warn!(file = %file.display(), "the kept host id is not valid; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("read", e)),
    }
    let id = format!("host-{}", crate::random::random_hex(6));
    std::fs::create_dir_all(data_dir).map_err(|e| fail("keep", e))?;
    std::fs::write(&file, format!("{id}\n")).map_err(|e| fail("keep", e))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::host_id(None, dir.path()).unwrap();
        assert!(first.starts_with("host-"));
        assert_eq!(super::host_id(None, dir.path()).unwrap(), first);
        assert_eq!(super::host_id(Some("a"), dir.path()).unwrap(), "a");
    }
}
