//! A module cannot break HTTP framing: `content-length`, `transfer-encoding`,
//! `connection` and the other connection headers it returns are dropped, and the
//! server frames the body itself, so a keep-alive connection stays usable.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{HostProcess, Modules};

/// Reads one HTTP/1.1 response with a `content-length` body; returns (head, body).
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length in:\n{head}"));
            while buf.len() < end + 4 + length {
                assert!(Instant::now() < deadline, "body did not arrive");
                let n = stream.read(&mut chunk).expect("read body");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            assert!(buf.is_empty(), "bytes beyond the declared body: {buf:?}");
            return (head, body);
        }
        assert!(Instant::now() < deadline, "no response head");
        let n = stream.read(&mut chunk).expect("read head");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn framing_headers_from_a_module_are_dropped() {
    let modules = Modules::new();
    modules.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&modules, &[], &[]);
    let mut stream = TcpStream::connect(host.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "GET /api/v1/probe/framing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        host.token
    );
    for round in 0..2 {
        stream.write_all(request.as_bytes()).expect("send");
        let (head, body) = read_response(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        assert_eq!(body, b"short body", "round {round}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-length: 10"),
            "round {round}: {head}"
        );
        assert!(
            !lower.contains("content-length: 999"),
            "round {round}: {head}"
        );
        assert!(
            !lower.contains("transfer-encoding"),
            "round {round}: {head}"
        );
        assert!(
            !lower.contains("connection: close"),
            "round {round}: {head}"
        );
        assert!(lower.contains("x-kept: yes"), "round {round}: {head}");
    }
}
