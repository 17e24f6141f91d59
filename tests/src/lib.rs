//! statecull's end-to-end kit: the generic test kit (`statecull-testkit`: namespaces,
//! daemons, scratch directories, root skips, cleanup), re-exported, plus what only the
//! end-to-end tests and `cargo xtask` need: the daemons' command lines outside a namespace
//! (`daemons`), the demo's two-WAN firewall (`lab`) and the five-namespace failover lab
//! (`failover`).
#![forbid(unsafe_code)]

pub use statecull_testkit::*;

pub mod daemons;
pub mod failover;
pub mod lab;
