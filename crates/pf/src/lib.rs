//! statecull's FreeBSD pf backend.
//!
//! * [`types`]: states, keys and kill requests as plain Rust values;
//! * [`abi`]: the amd64 C layouts and ioctl numbers, checked at compile time;
#![deny(unsafe_code)]

pub mod abi;
pub mod kernel;
pub mod model;
pub mod nl;
pub mod nv;
pub mod plan;
#[cfg(target_os = "freebsd")]
#[allow(unsafe_code)]
pub mod sys;
pub mod table_gen;
pub mod types;
