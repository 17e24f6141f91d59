//! The `statecull` operator tool, as a library: the broker client and the pieces of the
//! command line that tests reuse.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod engine_cmds;
pub mod output;
pub mod render;
pub mod selector_args;

pub use cli::CliError;
pub use client::{BrokerClient, ClientError};

/// The broker's socket unless `--socket` or `STATECULL_BROKER_SOCKET` say otherwise.
pub const DEFAULT_BROKER_SOCKET: &str = "/run/statecull/broker.sock";
