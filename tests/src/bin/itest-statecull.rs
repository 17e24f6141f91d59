//! The CLI, for integration tests (same code as `statecull`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_cli::cli::main(std::env::args_os())
}
