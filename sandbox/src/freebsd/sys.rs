//! The one FreeBSD syscall the `libc` crate does not declare: `connectat(2)` (FreeBSD ≥ 10,
//! `<sys/socket.h>`: `int connectat(int fd, int s, const struct sockaddr *name, socklen_t
//! namelen)`). Everything else Capsicum needs goes through the `capsicum` and `nix` crates.
//!
//! Type-checked for `x86_64-unknown-freebsd` in CI; it has not run on a FreeBSD kernel. The
//! only `unsafe` of the sandbox crate is here, one call per block.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{SockaddrLike, UnixAddr};

unsafe extern "C" {
    /// connectat(2): `connect(2)` of socket `s` to `name`, a Unix-domain path looked up
    /// relative to the directory descriptor `fd`. In capability mode `fd` needs
    /// `CAP_CONNECTAT` (and the lookup must stay beneath it); `s` needs `CAP_CONNECT`.
    fn connectat(
        fd: libc::c_int,
        s: libc::c_int,
        name: *const libc::sockaddr,
        namelen: libc::socklen_t,
    ) -> libc::c_int;
}

/// Connect `socket` (an `AF_UNIX` socket) to `addr`, a path relative to `dir`.
pub(super) fn connect_at(
    dir: BorrowedFd<'_>,
    socket: BorrowedFd<'_>,
    addr: &UnixAddr,
) -> io::Result<()> {
    // SAFETY: both descriptors are borrowed, so open for the whole call; `addr.as_ptr()`
    // points to a `sockaddr_un` nix built and owns, valid for reads of `addr.len()` bytes
    // (its own length field), which the kernel only reads.
    let rc = unsafe {
        connectat(dir.as_raw_fd(), socket.as_raw_fd(), SockaddrLike::as_ptr(addr), addr.len())
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
