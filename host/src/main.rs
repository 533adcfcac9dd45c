//! The `modhost` binary: the command line (`cli.rs`) over the library's `app` calls.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
