//! An out-of-process "plugin" in go-plugin's model: a separate process answering
//! length-prefixed requests on a Unix socket with the same greeting the native plugin
//! returns. Used by the `abi_calls` bench.
//!
//!   uds_echo SOCKET_PATH

use std::{
    io::{Read, Write},
    os::unix::net::UnixListener,
};

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: uds_echo SOCKET_PATH");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut len = [0u8; 4];
            while stream.read_exact(&mut len).is_ok() {
                let mut name = vec![0u8; u32::from_le_bytes(len) as usize];
                if stream.read_exact(&mut name).is_err() {
                    return;
                }
                let body = modhost_bench::greeting_body("Hello", &String::from_utf8_lossy(&name));
                let _ = stream.write_all(&(body.len() as u32).to_le_bytes());
                let _ = stream.write_all(&body);
            }
        });
    }
    Ok(())
}
