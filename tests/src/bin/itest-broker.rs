//! The broker, for integration tests (same code as `statecull-broker`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_broker::cli::main(std::env::args_os().skip(1))
}
