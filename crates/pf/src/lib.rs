//! statecull's FreeBSD pf backend.
//!
//! * [`types`]: states, keys and kill requests as plain Rust values;
//! * [`abi`]: the amd64 C layouts and ioctl numbers, checked at compile time;
#![forbid(unsafe_code)]

pub mod abi;
pub mod types;
