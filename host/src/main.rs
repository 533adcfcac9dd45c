//! The `modhost` binary: a thin shell over the library's CLI.

fn main() -> std::process::ExitCode {
    modhost::cli::main()
}
