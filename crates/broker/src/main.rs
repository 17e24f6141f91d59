//! `statecull-broker`: see `statecull-broker --help` and `statecull_broker::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    statecull_broker::cli::main(std::env::args_os().skip(1))
}
