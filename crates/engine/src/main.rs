//! `statecull-engine`: see `statecull-engine --help` and `statecull_engine::daemon`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_engine::daemon::main(std::env::args_os())
}
