//! Cost of one call across the plugin boundary, side by side:
//! a direct Rust call, a `sabi_trait` call, a real plugin handler (`hello.so` loaded by
//! the host, returning an `FfiFuture`), and an out-of-process plugin over a Unix socket.
//! With `--features wasm`, also the same trivial handler as a WebAssembly function under
//! wasmtime (hand-written WAT; the feature is bench-only and never built by CI).

#![allow(non_local_definitions)] // abi_stable's sabi_trait macro

use std::{
    hint::black_box,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::Arc,
};

use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, ROption, RSlice, RStr, RVec, Tuple2},
};
use modhost::config::HostConfig;
use modhost::routes::table::Lookup;
use modhost::Host;
use modhost_plugin_api::ffi::{FfiRequestView, FfiRequestView_TO, FfiUser};

/// `GET /api/v1/hello/greet/ada`, as the host would lend it to the handler.
struct GreetRequest;

impl FfiRequestView for GreetRequest {
    fn method(&self) -> RStr<'_> {
        "GET".into()
    }
    fn path(&self) -> RStr<'_> {
        "/api/v1/hello/greet/ada".into()
    }
    fn query(&self) -> RStr<'_> {
        "".into()
    }
    fn param(&self, index: usize) -> ROption<Tuple2<RStr<'_>, RStr<'_>>> {
        match index {
            0 => ROption::RSome(Tuple2("name".into(), "ada".into())),
            _ => ROption::RNone,
        }
    }
    fn header(&self, _index: usize) -> ROption<Tuple2<RStr<'_>, RSlice<'_, u8>>> {
        ROption::RNone
    }
    fn body(&self) -> RSlice<'_, u8> {
        RSlice::default()
    }
    fn user(&self) -> ROption<FfiUser> {
        ROption::RNone
    }
}

fn main() {
    divan::main();
}

#[inline(never)]
fn direct(name: &str) -> Vec<u8> {
    modhost_bench::greeting_body("Hello", name)
}

#[divan::bench]
fn direct_rust_call() -> Vec<u8> {
    direct(black_box("ada"))
}

/// The native twin of the WebAssembly function: the same prefix copy, no JSON.
#[inline(never)]
fn trivial(buf: &mut [u8; 64], name: &[u8]) -> usize {
    buf[..7].copy_from_slice(b"Hello, ");
    buf[7..7 + name.len()].copy_from_slice(name);
    7 + name.len()
}

#[divan::bench]
fn direct_rust_trivial() -> usize {
    let mut buf = [0u8; 64];
    trivial(&mut buf, black_box(b"ada"))
}

#[sabi_trait]
trait Greeter: Send + Sync {
    fn greet(&self, name: RStr<'_>) -> RVec<u8>;
}

struct Local;

impl Greeter for Local {
    fn greet(&self, name: RStr<'_>) -> RVec<u8> {
        modhost_bench::greeting_body("Hello", name.as_str()).into()
    }
}

#[divan::bench]
fn sabi_trait_call(bencher: divan::Bencher) {
    let object: Greeter_TO<'static, RBox<()>> = Greeter_TO::from_value(Local, TD_Opaque);
    bencher.bench_local(|| object.greet(black_box("ada").into()));
}

/// The release build of the example plugins (scripts/bench.sh builds them).
fn plugin_dir() -> PathBuf {
    std::env::var_os("MODHOST_BENCH_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"))
}

#[divan::bench]
fn plugin_handler_ffi_future(bencher: divan::Bencher) {
    let lib = plugin_dir().join("libhello.so");
    if !lib.exists() {
        eprintln!(
            "SKIP plugin_handler_ffi_future: {} not built (run scripts/bench.sh)",
            lib.display()
        );
        return;
    }
    let tmp = std::env::temp_dir().join(format!("modhost-bench-abi-{}", std::process::id()));
    let modules = tmp.join("modules/hello");
    std::fs::create_dir_all(&modules).expect("bench dir");
    std::fs::copy(&lib, modules.join("libhello.so")).expect("copy plugin");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/hello/module.yaml"),
        modules.join("module.yaml"),
    )
    .expect("manifest");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = HostConfig {
        modules_dir: tmp.join("modules"),
        data_dir: tmp.join("data"),
        watch: false,
        ..HostConfig::default()
    };
    let host: Arc<Host> = rt.block_on(Host::boot(config)).expect("boot");
    let table = host.routes();
    let Lookup::Found { route, .. } = table.lookup("GET", "/api/v1/hello/greet/ada") else {
        panic!("hello's route is missing");
    };
    let handler = route.handler.clone();
    bencher.bench_local(|| {
        let req = FfiRequestView_TO::from_value(GreetRequest, TD_Opaque);
        rt.block_on(handler.call(req)).body.len()
    });
    let _ = std::fs::remove_dir_all(&tmp);
}

#[divan::bench]
fn out_of_process_unix_socket(bencher: divan::Bencher) {
    let socket = std::env::temp_dir().join(format!("modhost-bench-{}.sock", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_uds_echo"))
        .arg(&socket)
        .spawn()
        .expect("spawn uds_echo");
    let mut stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    bencher.bench_local(|| {
        let name = black_box(b"ada");
        stream
            .write_all(&(name.len() as u32).to_le_bytes())
            .expect("write");
        stream.write_all(name).expect("write");
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).expect("read");
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        stream.read_exact(&mut body).expect("read");
        body
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
}

/// The greeting handler in WebAssembly: copies the name after a fixed "Hello, " prefix in
/// linear memory and returns the length, the guest-side analogue of the native handler.
#[cfg(feature = "wasm")]
const GREET_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "Hello, ")
  (func (export "greet") (param $ptr i32) (param $len i32) (result i32)
    (memory.copy (i32.const 7) (local.get $ptr) (local.get $len))
    (i32.add (local.get $len) (i32.const 7))))
"#;

#[cfg(feature = "wasm")]
#[divan::bench]
fn wasm_function_wasmtime(bencher: divan::Bencher) {
    use wasmtime::{Engine, Instance, Module, Store};
    let engine = Engine::default();
    let module = Module::new(&engine, GREET_WAT).expect("wat");
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).expect("instance");
    let memory = instance.get_memory(&mut store, "memory").expect("memory");
    let greet = instance
        .get_typed_func::<(i32, i32), i32>(&mut store, "greet")
        .expect("greet");
    bencher.bench_local(|| {
        // Host writes the argument into guest memory, calls, reads the result back.
        memory
            .write(&mut store, 1024, black_box(b"ada"))
            .expect("write");
        let len = greet.call(&mut store, (1024, 3)).expect("call") as usize;
        let mut out = vec![0u8; len];
        memory.read(&store, 0, &mut out).expect("read");
        out
    });
}
