//! statecull's privileged half.
//!
//! The broker owns the state table and does exactly two things with it: list states and kill
//! states, through a closed list of verbs over a Unix socket. It has no policy: it checks
//! every request (length, then meaning), refuses what is empty, oversized or invalid, never
//! kills states touching its own protected prefixes, and writes one audit line per mutation.
//!
//! * [`config`]: the broker's own small configuration;
//! * [`server`]: listener, peer credentials, the per-connection request loop;
//! * [`backend`]: the interface to a state table, and the conntrack implementation;
//! * [`pf_backend`]: FreeBSD pf and its model.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod config;
mod error;
pub mod pf_backend;
pub mod server;

pub use error::BrokerError;
