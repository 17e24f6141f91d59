//! statecull's privileged half.
//!
//! The broker owns the state table and does exactly two things with it: list states and kill
//! states, through a closed list of verbs over a Unix socket. It has no policy: it checks
//! every request (length, then meaning), refuses what is empty, oversized or invalid, never
//! kills states touching its own protected prefixes, and writes one audit line per mutation.
//!
//! * [`config`]: the broker's own small configuration;
//! * [`dispatch`]: one client's conversation, without I/O (decode, check, act, audit);
//! * [`admission`]: connection slots and rate-limited refusal logs, pure;
//! * [`server`]: listener, peer credentials, threads and deadlines;
//! * [`backend`]: the interface to a state table, and two thin adapters over conntrack's and
//!   pf's tables (the pf model too, with feature `model`).
#![forbid(unsafe_code)]

pub mod admission;
pub mod backend;
pub mod cli;
pub mod config;
pub mod dispatch;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod flags;
pub mod server;

pub use error::BrokerError;
