//! statecull's broker client.
//!
//! * [`session`]: the conversation without I/O. Requests become frames to write, bytes read
//!   become responses, and every response is checked against the request in flight; built
//!   on `statecull_proto::frame::FrameAssembler`, tested byte by byte.
//! * [`exchange`]: typed exchanges (a request and how to read its answer into a value),
//!   built without a connection; the engine's broker link hands them to its connection.
//! * [`blocking`]: [`BrokerClient`], the session over a `std` socket with socket timeouts
//!   (the operator's CLI, the tests' tools).
//! * `tokio_driver` (feature `tokio`): `AsyncBrokerClient`, the same over a tokio socket
//!   (the engine: no thread per call).
//!
//! The default socket paths live here too, so that neither daemon nor the CLI has to take
//! them from another's crate. This crate contains no `unsafe`.
#![forbid(unsafe_code)]

pub mod blocking;
mod error;
pub mod exchange;
pub mod session;
#[cfg(feature = "tokio")]
pub mod tokio_driver;

pub use blocking::BrokerClient;
pub use error::{ClientError, connect_error, not_a_socket};
pub use exchange::{Connected, Exchange, IntoExchange};
pub use session::Session;
#[cfg(feature = "tokio")]
pub use tokio_driver::AsyncBrokerClient;

/// The broker's socket unless `--socket`, `STATECULL_BROKER_SOCKET` or the policy's
/// `engine.broker_socket` say otherwise.
pub use statecull_proto::DEFAULT_BROKER_SOCKET;

/// Bytes asked of the socket per read: a few frames of counts and kill reports, or a part of
/// a snapshot batch (at most 1 MiB); the session keeps what a read brings beyond a frame.
const READ_CHUNK: usize = 64 * 1024;
