//! The `modhost` binary: the command line (`cli.rs`) over the library's `app` calls.

mod cli;

/// mimalloc for the host's own allocations: the request path allocates per request,
/// and mimalloc takes fewer instructions per allocation than glibc's malloc (measured in
/// bench/RESULTS.md). Modules keep their own allocator; abi_stable types free through
/// the allocator that made them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
