//! `statecull-engine`: the unprivileged half. It watches gateways (ICMP probes, dpinger
//! status sockets, operator/routing-manager signals), feeds the pure state machine and
//! planner of `statecull-policy`, and drives the broker: kill only after routing has moved,
//! then one trailing sweep.
#![forbid(unsafe_code)]

pub mod batch;
pub mod broker;
pub mod control;
pub mod daemon;
pub mod dial;
pub mod dpinger;
pub mod error;
pub mod events;
pub mod executor;
pub mod icmp;
pub mod metrics;
pub mod probe;
pub mod raw_probe;
pub mod refresh;
pub mod reload;
pub mod routes;
pub mod signals;
pub mod sources;
pub mod state;
pub mod states;

pub use error::EngineError;
