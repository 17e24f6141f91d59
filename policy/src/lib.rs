//! statecull's decision logic. Everything here is pure and deterministic: no I/O (the
//! caller reads the policy file and passes its text), no clock (time is a [`Millis`] value
//! the caller supplies), no randomness. That is what lets the engine's decisions be tested
//! exhaustively with a fake clock and a fake state table.
//!
//! * [`model`]: the validated policy (gateways, groups, protected flows, routing) and the
//!   default of every setting a policy may leave out;
//! * [`load`]: TOML text to a validated [`Policy`], errors naming file, line and field;
//! * [`explain`]: a policy in plain words, with warnings about likely mistakes (also
//!   reachable as `load::explain`, `load::warnings`);
//! * [`health`]: the per-gateway state machine (sliding window, hysteresis, hold-down, flap
//!   damping);
//! * [`plan`]: from policy + health transitions + broker capabilities to a kill plan with
//!   a human explanation;
//! * [`portability`]: which features work on which system (a reviewed table), for
//!   `check-policy --target-os`.
#![forbid(unsafe_code)]

pub mod explain;
pub mod health;
pub mod load;
pub mod model;
pub mod plan;
pub mod portability;

pub use model::{Millis, Policy};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy text does not parse or does not make sense. `line` is 1-based; `field` is
    /// the dotted path of the offending key when known (`gateway[1].monitor`).
    #[error("{file}:{line}: {field}: {message}", line = line.map_or_else(|| "?".to_string(), |l| l.to_string()), field = field.as_deref().unwrap_or("policy"))]
    Invalid { file: String, line: Option<usize>, field: Option<String>, message: String },
    /// The planner was asked about a gateway the policy does not name.
    #[error("unknown gateway {0:?} (the policy names: {1})")]
    UnknownGateway(String, String),
    /// A gateway's states cannot be recognised with what the broker's backend supports.
    #[error("gateway {gateway}: {message}")]
    Unrecognisable { gateway: String, message: String },
}
