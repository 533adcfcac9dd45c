//! Secrets kept out of logs and error messages: a URL's password.
//!
//! May use: nothing else of the host.

/// `url` with its password (if any) replaced by `***`.
pub fn url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        assert_eq!(super::url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(super::url("nats://u:pw@h:4222"), "nats://u:***@h:4222");
        assert_eq!(super::url("nats://h:4222"), "nats://h:4222");
    }
}
