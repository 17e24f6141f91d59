//! The engine, for integration tests (same code as `statecull-engine`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_engine::daemon::main(std::env::args_os())
}
