//! Random identifiers and secrets from the operating system's generator.

/// `bytes` random bytes as lower-case hex (`2 * bytes` characters).
///
/// Panics only if the operating system has no random source at all, in which case no
/// secret could be made safely anyway.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
    crate::hex::encode(&buf)
}
