//! statecull's Linux conntrack backend.
//!
//! * [`codec`]: netlink message building and zero-copy parsing (`statecull-netlink`, pure);
//! * [`ct`]: ctnetlink requests and entry parsing (pure);
//! * [`matcher`]: selector semantics and what the kernel can filter (pure);
//! * `sys` (Linux): one netlink socket per operation, via `netlink-sys` and `nix`;
//! * `ops` (Linux): the kernel conversations: statistics, dumps, batched deletes, flushes;
//! * `table` (Linux): list, count, kill and flush, and which kernel filters to trust;
//! * `fill` (Linux, feature `fill`): loading big test tables.
//!
//! The codec is our own because the dump path parses a million entries per listing and the
//! delete path encodes one message per victim; it is checked byte for byte against
//! `netlink-packet-netfilter` in the tests. No `unsafe` anywhere in this crate.
#![forbid(unsafe_code)]

/// Netlink framing, from `statecull-netlink`.
pub use statecull_netlink as codec;
pub mod ct;
mod error;
pub mod matcher;

#[cfg(all(target_os = "linux", feature = "fill"))]
pub mod fill;
#[cfg(target_os = "linux")]
mod ops;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(target_os = "linux")]
mod table;

pub use error::{CtError, errno_text};
pub use matcher::KernelFeatures;
#[cfg(target_os = "linux")]
pub use sys::kernel_release;
#[cfg(target_os = "linux")]
pub use table::{Conntrack, Counts, MAX_KERNEL_FLUSHES, TupleFilter, to_record};
