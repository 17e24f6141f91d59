//! statecull's FreeBSD pf backend.
//!
//! * [`types`]: states, keys and kill requests as plain Rust values;
//! * [`abi`]: the amd64 C layouts and ioctl numbers, checked at compile time;
//! * [`nv`], [`nl`]: the libnv packed format and pf generic netlink, pure codecs;
//! * [`device`]: the kernel's three interfaces as a byte-level trait; [`client`]: the client
//!   that probes which of them a kernel has and speaks them;
//! * [`plan`]: selector semantics, twin pairing and the choice of kill path, priced by
//!   [`cost`] (the kernel's work per compared, exported and killed state, in one place);
//! * [`table`]: a pf state table with the same face as conntrack's (snapshot, count, kills);
//! * `sys` (FreeBSD only): the device over `/dev/pf` and pf netlink, the crate's only `unsafe`;
//! * feature `model`: the kernel model (`model`), the device in front of it
//!   (`model_device`) and a router-table generator (`table_gen`), for tests and simulation.
#![deny(unsafe_code)]

pub mod abi;
pub mod client;
pub mod cost;
pub mod device;
#[cfg(feature = "model")]
pub mod model;
#[cfg(feature = "model")]
pub mod model_device;
pub mod nl;
pub mod nv;
pub mod plan;
#[cfg(target_os = "freebsd")]
#[allow(unsafe_code)]
pub mod sys;
pub mod table;
#[cfg(feature = "model")]
pub mod table_gen;
pub mod types;
