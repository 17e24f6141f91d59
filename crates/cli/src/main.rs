//! `statecull`: the operator's tool. See `statecull --help` and `statecull_cli::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_cli::cli::main(std::env::args_os())
}
