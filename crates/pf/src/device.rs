//! The pf kernel at the byte level: the three interfaces the backend uses, as a trait.
//!
//! [`PfDevice`] has exactly the kernel interfaces statecull needs: the nvlist ioctls on
//! `/dev/pf`, `DIOCGETSTATESV2`, `DIOCGETRULES` (the ruleset's ticket), and a pf
//! generic-netlink socket. The FreeBSD implementation
//! (`sys.rs`) makes those syscalls; the model's (`model_device.rs`, feature `model`) decodes
//! the same bytes and applies them to the model, so everything above runs unchanged on Linux.

/// FreeBSD errno values (`sys/sys/errno.h`; several differ from Linux's).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENOTTY: i32 = 25;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    /// Also `ENOTSUP` on FreeBSD.
    pub const EOPNOTSUPP: i32 = 45;
    pub const EBADMSG: i32 = 89;
}

/// A failed kernel call (FreeBSD errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

/// The pf kernel interfaces, at the byte level.
pub trait PfDevice: Send {
    /// `ioctl(/dev/pf, cmd, &pfioc_nv { data, len, size })`: a packed nvlist request in, the
    /// packed reply (`len` bytes) out; `reply_size` is the buffer the caller offers.
    fn nv_ioctl(&mut self, cmd: u64, request: &[u8], reply_size: usize) -> Result<Vec<u8>, Errno>;
    /// `ioctl(/dev/pf, DIOCGETSTATESV2)` with `ps_len = buf.len()`: fills `buf` with whole
    /// records and returns the new `ps_len` (with an empty `buf`: the kernel's estimate).
    fn get_states_v2(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;
    /// `ioctl(/dev/pf, DIOCGETRULES, pr)` with `pr` one `struct pfioc_rule`
    /// ([`crate::abi::PFIOC_RULE_LEN`] bytes), read and written back by the kernel.
    fn get_rules(&mut self, pr: &mut [u8]) -> Result<(), Errno>;
    /// Send one datagram on the pf netlink socket.
    fn nl_send(&mut self, datagram: &[u8]) -> Result<(), Errno>;
    /// Receive one datagram from the pf netlink socket into `buf` (cleared first).
    fn nl_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), Errno>;
    /// A second handle on the same kernel table with descriptors of its own, so that reads
    /// (a count's listing) and kills each have their own lane and never queue behind each
    /// other (the kernel interleaves them row by row). Open it before confinement.
    fn another(&self) -> Result<Self, Errno>
    where
        Self: Sized;
}
