//! The `statecull` operator tool, as a library: the pieces of the command line that tests
//! reuse. The broker client itself is `statecull-client` (re-exported here for the tests'
//! and tools' convenience).
#![forbid(unsafe_code)]

pub mod cli;
pub mod engine_cmds;
pub mod import_cmd;
pub mod list_format;
pub mod output;
pub mod pfctl_hint;
pub mod render;
pub mod selector_args;

pub use cli::CliError;
pub use statecull_client::{BrokerClient, ClientError, DEFAULT_BROKER_SOCKET};
