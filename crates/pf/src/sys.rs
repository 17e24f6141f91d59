//! The FreeBSD syscall layer: `/dev/pf` ioctls and the pf netlink socket, and the Capsicum
//! limits on both descriptors.
//!
//! Type-checked in CI for `x86_64-unknown-freebsd`; it has not run on a FreeBSD kernel. The
//! only `unsafe` of the pf backend is here, one syscall per block.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::abi::{
    DIOCCLRSTATESNV, DIOCGETRULES, DIOCGETSTATESV2, DIOCKILLSTATESNV, PF_STATE_VERSION,
    PFIOC_RULE_LEN, PfiocNv, PfiocStatesV2,
};
use crate::device::{Errno, PfDevice};

// The request numbers nix computes with FreeBSD's encoding must be the pinned ones.
const _: () = {
    assert!(
        nix::request_code_readwrite!(b'D', 41, size_of::<PfiocNv>()) as u64 == DIOCKILLSTATESNV
    );
    assert!(nix::request_code_readwrite!(b'D', 18, size_of::<PfiocNv>()) as u64 == DIOCCLRSTATESNV);
    assert!(
        nix::request_code_readwrite!(b'D', 93, size_of::<PfiocStatesV2>()) as u64
            == DIOCGETSTATESV2
    );
    assert!(nix::request_code_readwrite!(b'D', 6, PFIOC_RULE_LEN) == DIOCGETRULES);
};

nix::ioctl_readwrite!(diockillstatesnv, b'D', 41, PfiocNv);
nix::ioctl_readwrite!(diocclrstatesnv, b'D', 18, PfiocNv);
nix::ioctl_readwrite!(diocgetstatesv2, b'D', 93, PfiocStatesV2);
// The size comes from the buffer: `get_rules` refuses any but `PFIOC_RULE_LEN` bytes.
nix::ioctl_readwrite_buf!(diocgetrules, b'D', 6, u8);

/// FreeBSD's `AF_NETLINK` and `NETLINK_GENERIC` [pf-kernel.md §4: unverified values].
const AF_NETLINK: libc::c_int = 38;
const NETLINK_GENERIC: libc::c_int = 16;

/// `/dev/pf` opened read-write, and a generic netlink socket if the kernel has one.
#[derive(Debug)]
pub struct FreeBsdDevice {
    pf: File,
    nl: Option<OwnedFd>,
}

fn errno(e: nix::errno::Errno) -> Errno {
    Errno(e as i32)
}

impl FreeBsdDevice {
    /// Open `/dev/pf` (read-write: kills need FWRITE) and a netlink socket (absent before
    /// FreeBSD 14, which is fine: the client then uses the ioctls).
    pub fn open() -> io::Result<Self> {
        let pf = OpenOptions::new().read(true).write(true).open("/dev/pf")?;
        // SAFETY: socket(2) with constant arguments; the result is checked before use and
        // owned by exactly one OwnedFd.
        let raw = unsafe {
            libc::socket(AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC)
        };
        let nl = if raw >= 0 {
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            Some(unsafe { OwnedFd::from_raw_fd(raw) })
        } else {
            None
        };
        Ok(Self { pf, nl })
    }

    /// Capsicum: `/dev/pf` keeps only `CAP_IOCTL` for exactly the ioctls the backend uses;
    /// the netlink socket only send, receive and event. Call after opening, before
    /// `cap_enter`.
    pub fn limit_capabilities(&self) -> io::Result<()> {
        use capsicum::{CapRights, FileRights, IoctlsBuilder, Right};
        FileRights::new().allow(Right::Ioctl).limit(&self.pf)?;
        IoctlsBuilder::new()
            .allow(DIOCKILLSTATESNV as libc::u_long)
            .allow(DIOCCLRSTATESNV as libc::u_long)
            .allow(DIOCGETSTATESV2 as libc::u_long)
            .allow(DIOCGETRULES as libc::u_long)
            .finalize()
            .limit(&self.pf)?;
        if let Some(nl) = &self.nl {
            FileRights::new()
                .allow(Right::Read)
                .allow(Right::Write)
                .allow(Right::Event)
                .limit(nl)?;
        }
        Ok(())
    }

    fn nl(&self) -> Result<&OwnedFd, Errno> {
        self.nl.as_ref().ok_or(Errno(crate::device::errno::EOPNOTSUPP))
    }
}

impl PfDevice for FreeBsdDevice {
    fn another(&self) -> Result<Self, Errno> {
        Self::open().map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn nv_ioctl(&mut self, cmd: u64, request: &[u8], reply_size: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; request.len().max(reply_size)];
        buf[..request.len()].copy_from_slice(request);
        let mut nv = PfiocNv { data: buf.as_mut_ptr().cast(), len: request.len(), size: buf.len() };
        let fd = self.pf.as_raw_fd();
        let result = if cmd == DIOCKILLSTATESNV {
            // SAFETY: `nv` points at `buf`, which lives across the call and holds `size` bytes.
            unsafe { diockillstatesnv(fd, &mut nv) }
        } else if cmd == DIOCCLRSTATESNV {
            // SAFETY: as above.
            unsafe { diocclrstatesnv(fd, &mut nv) }
        } else {
            return Err(Errno(crate::device::errno::ENOTTY));
        };
        result.map_err(errno)?;
        buf.truncate(nv.len.min(buf.len()));
        Ok(buf)
    }

    fn get_rules(&mut self, pr: &mut [u8]) -> Result<(), Errno> {
        if pr.len() != PFIOC_RULE_LEN {
            return Err(Errno(crate::device::errno::EINVAL));
        }
        // SAFETY: `pr` is a live, exclusively borrowed buffer of exactly `PFIOC_RULE_LEN`
        // bytes, the size the request number encodes; the kernel reads and writes only that.
        unsafe { diocgetrules(self.pf.as_raw_fd(), pr) }.map_err(errno)?;
        Ok(())
    }

    fn get_states_v2(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        let len = i32::try_from(buf.len()).map_err(|_| Errno(crate::device::errno::E2BIG))?;
        let mut ps = PfiocStatesV2 {
            ps_len: len,
            ps_req_version: PF_STATE_VERSION,
            ps_buf: buf.as_mut_ptr().cast(),
        };
        // SAFETY: `ps_buf` points at `buf` of `ps_len` bytes, alive across the call.
        unsafe { diocgetstatesv2(self.pf.as_raw_fd(), &mut ps) }.map_err(errno)?;
        usize::try_from(ps.ps_len).map_err(|_| Errno(crate::device::errno::EINVAL))
    }

    fn nl_send(&mut self, datagram: &[u8]) -> Result<(), Errno> {
        let fd = self.nl()?;
        let n = nix::sys::socket::send(
            fd.as_fd().as_raw_fd(),
            datagram,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(errno)?;
        if n == datagram.len() { Ok(()) } else { Err(Errno(crate::device::errno::EINVAL)) }
    }

    fn nl_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), Errno> {
        let fd = self.nl()?;
        buf.clear();
        buf.resize(64 * 1024, 0);
        let n = nix::sys::socket::recv(
            fd.as_fd().as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(errno)?;
        buf.truncate(n);
        Ok(())
    }
}

/// `net.pf.states_hashsize`: the id-hash rows of pf's state table (a boot-time tunable).
/// The kernel declares it `SYSCTL_ULONG(_net_pf, OID_AUTO, states_hashsize, CTLFLAG_RDTUN,
/// &pf_hashsize, ...)` (sys/netpfil/pf/pf_ioctl.c): a `u_long`, 8 bytes on amd64, so it is
/// read into 8 bytes (a 4-byte buffer would get `ENOMEM` and the value be assumed).
pub fn states_hashsize() -> io::Result<u64> {
    let name = c"net.pf.states_hashsize";
    const _: () = assert!(size_of::<libc::c_ulong>() == size_of::<u64>());
    let mut value: u64 = 0;
    let mut len = size_of::<u64>();
    // SAFETY: sysctlbyname(3) with a NUL-terminated name, an output buffer of `len` bytes that
    // lives across the call, and no new value.
    let rc = unsafe {
        libc::sysctlbyname(name.as_ptr(), (&raw mut value).cast(), &mut len, std::ptr::null(), 0)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != size_of::<u64>() || value == 0 {
        return Err(io::Error::other(format!("unexpected value {value} ({len} bytes)")));
    }
    Ok(value)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
