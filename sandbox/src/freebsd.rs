//! FreeBSD confinement: Capsicum rights on every descriptor a daemon keeps, capability
//! mode, and the switch to an unprivileged user.
//!
//! **Type-checked for `x86_64-unknown-freebsd` in CI; it has not run on a FreeBSD
//! kernel.** No `unsafe` here: the syscalls are made by the `capsicum` and `nix` crates.
//!
//! # Order
//!
//! Both daemons start as root (rc.d, `sandbox/profiles/rc.d/`) and then, in this order:
//!
//! 1. open everything they will ever use (listeners, the broker connection, `/dev/pf`, the
//!    pf netlink socket, metrics listener) and read their configuration into memory;
//! 2. [`limit`] each kept descriptor to its use ([`FdUse`]), stdout/stderr included
//!    ([`FdUse::Output`]);
//! 3. [`drop_to_user`] (needs the password database, so before capability mode);
//! 4. [`enter_capability_mode`]: from here on no path can be opened, no socket bound or
//!    connected by address, and each descriptor allows only the rights left on it.
//!
//! [`crate::confine`] does steps 3 and 4; the caller does 1 and 2.
//!
//! Rights can only shrink, so limiting twice is harmless, and a descriptor that was not
//! limited keeps every right it had: list every kept descriptor.
//!
//! # The pf device
//!
//! The broker limits `/dev/pf` and its pf netlink socket itself, in
//! `statecull_pf::sys::FreeBsdDevice::limit_capabilities` (crates/pf/src/sys.rs): `/dev/pf`
//! keeps `CAP_IOCTL` for exactly `DIOCKILLSTATESNV`, `DIOCCLRSTATESNV` and
//! `DIOCGETSTATESV2` (numbers pinned in `statecull_pf::abi`), the netlink socket only
//! read, write and event. [`FdUse::PfDevice`] is the same rule for any other caller and
//! takes the list as data, so the numbers stay defined in one place.
//!
//! # What capability mode forbids, and how the daemons live with it
//!
//! `connect(2)` to a path or address fails with `ECAPMODE`. The engine reaches Unix sockets
//! (the broker, dpinger status sockets, again after either restarts) only with
//! `connectat(2)` relative to a directory descriptor opened before
//! [`enter_capability_mode`]: [`open_socket_directory`] opens one and limits it to
//! [`FdUse::SocketDirectory`], [`connect_unix_at`] connects a new socket to a name in it
//! (the one `unsafe` call is in `freebsd/sys.rs`). The engine's dialer
//! (`crates/engine/src/dial.rs`) holds those descriptors, one per directory its policy names.
//! A directory that is removed and created again is not the one held: restart the engine.
//! Likewise `sendto(2)` with a destination address fails: datagram and raw sockets (ICMP
//! probes) must be connected before capability mode ([`FdUse::Datagram`], [`FdUse::Probe`]).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use capsicum::{CapRights, Fcntl, FcntlRights, FileRights, IoctlsBuilder, Right};
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use crate::SandboxError;

#[allow(unsafe_code)]
mod sys;

/// What a kept descriptor is used for; [`limit`] leaves it exactly the rights that use
/// needs (see each variant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdUse {
    /// A listening socket (Unix or TCP) that is only accepted from. Capsicum gives an
    /// accepted socket the rights of its listener, so this is [`FdUse::Stream`] plus
    /// `CAP_ACCEPT`: no `CAP_BIND`, `CAP_LISTEN` or `CAP_CONNECT`.
    Listener,
    /// A connected stream socket: read, write, poll/kqueue (`CAP_EVENT`), shutdown,
    /// fstat, get/set socket options (peer credentials via `LOCAL_PEERCRED`, timeouts),
    /// local and peer name, and `fcntl(F_GETFL/F_SETFL)` only (non-blocking mode).
    Stream,
    /// A connected datagram socket (ICMP probes, netlink): as [`FdUse::Stream`] without
    /// peer name and shutdown. It must be connected before capability mode, where
    /// `connect(2)` and `sendto(2)` with an address fail with `ECAPMODE`.
    Datagram,
    /// A raw ICMP probe socket, connected to its target before capability mode: send
    /// (`CAP_WRITE`), receive (`CAP_READ`) and kqueue (`CAP_EVENT`) only. Its options (source
    /// address, FIB, non-blocking mode) are all set before it is limited.
    Probe,
    /// `/dev/pf`: `CAP_IOCTL` only, for exactly these ioctl request numbers (the broker
    /// uses `DIOCKILLSTATESNV`, `DIOCCLRSTATESNV` and `DIOCGETSTATESV2`, see the module
    /// documentation). An empty list is refused.
    PfDevice {
        /// The ioctl request numbers allowed, as the pf ABI defines them.
        ioctls: Vec<u64>,
    },
    /// A directory whose Unix sockets are reached later with `connectat(2)` (the broker's
    /// socket directory, dpinger's `/var/run`): `CAP_LOOKUP` and `CAP_CONNECTAT` only,
    /// so nothing in it can be opened, listed, created or removed.
    SocketDirectory,
    /// A directory whose files are read later with [`read_file_at`] (the engine's policy
    /// directory, for reloads): `CAP_LOOKUP`, `CAP_READ`, `CAP_FSTAT` and `CAP_SEEK` only;
    /// a file opened through it gets no more (nothing can be written, created or removed).
    ReadDirectory,
    /// stdout or stderr (log output): write, fstat, poll and `fcntl(F_GETFL)`.
    Output,
}

impl FdUse {
    /// A short name for errors and `--print-sandbox`.
    pub fn name(&self) -> &'static str {
        match self {
            FdUse::Listener => "listener",
            FdUse::Stream => "stream",
            FdUse::Datagram => "datagram",
            FdUse::Probe => "probe",
            FdUse::PfDevice { .. } => "pf device",
            FdUse::SocketDirectory => "socket directory",
            FdUse::ReadDirectory => "read-only directory",
            FdUse::Output => "output",
        }
    }

    /// The `cap_rights_limit(2)` set for this use.
    fn rights(&self) -> FileRights {
        let mut rights = FileRights::new();
        let list: &[Right] = match self {
            FdUse::Listener => &[
                Right::Accept,
                Right::Read,
                Right::Write,
                Right::Event,
                Right::Shutdown,
                Right::Fstat,
                Right::Getsockopt,
                Right::Setsockopt,
                Right::Getsockname,
                Right::Getpeername,
                Right::Fcntl,
            ],
            FdUse::Stream => &[
                Right::Read,
                Right::Write,
                Right::Event,
                Right::Shutdown,
                Right::Fstat,
                Right::Getsockopt,
                Right::Setsockopt,
                Right::Getsockname,
                Right::Getpeername,
                Right::Fcntl,
            ],
            FdUse::Datagram => &[
                Right::Read,
                Right::Write,
                Right::Event,
                Right::Fstat,
                Right::Getsockopt,
                Right::Setsockopt,
                Right::Getsockname,
                Right::Fcntl,
            ],
            FdUse::Probe => &[Right::Read, Right::Write, Right::Event],
            FdUse::PfDevice { .. } => &[Right::Ioctl],
            FdUse::SocketDirectory => &[Right::Lookup, Right::Connectat],
            FdUse::ReadDirectory => &[Right::Lookup, Right::Read, Right::Fstat, Right::Seek],
            FdUse::Output => &[Right::Write, Right::Fstat, Right::Event, Right::Fcntl],
        };
        for right in list {
            rights.allow(*right);
        }
        rights
    }

    /// The `cap_fcntls_limit(2)` set, for uses that keep `CAP_FCNTL`.
    fn fcntls(&self) -> Option<FcntlRights> {
        let mut fcntls = FcntlRights::new();
        match self {
            FdUse::Listener | FdUse::Stream | FdUse::Datagram => {
                fcntls.allow(Fcntl::GetFL).allow(Fcntl::SetFL);
            }
            FdUse::Output => {
                fcntls.allow(Fcntl::GetFL);
            }
            FdUse::Probe
            | FdUse::PfDevice { .. }
            | FdUse::SocketDirectory
            | FdUse::ReadDirectory => return None,
        }
        Some(fcntls)
    }
}

/// Capsicum failures; they reach callers as [`SandboxError::FreeBsd`]. User switching fails
/// with the crate's common variants ([`SandboxError::UnknownUser`],
/// [`SandboxError::SwitchUser`], [`SandboxError::Verify`], ...), as on Linux.
#[derive(Debug, thiserror::Error)]
pub enum FreeBsdError {
    #[error("capsicum: limiting descriptor {fd} ({use_}) with {call}: {source}")]
    Limit { fd: i32, use_: &'static str, call: &'static str, source: io::Error },
    #[error("capsicum: the ioctl list for descriptor {fd} is empty")]
    NoIoctls { fd: i32 },
    #[error("capsicum: ioctl request {0:#x} does not fit this platform's u_long")]
    IoctlRange(u64),
    #[error("capsicum: cap_enter: {0}")]
    Enter(io::Error),
    #[error("capsicum: cap_enter returned but the process is not in capability mode")]
    NotInCapabilityMode,
    #[error("opening the socket directory {}: {source}", path.display())]
    OpenDirectory { path: std::path::PathBuf, source: io::Error },
}

fn limit_err(
    fd: BorrowedFd<'_>,
    use_: &FdUse,
    call: &'static str,
) -> impl FnOnce(io::Error) -> SandboxError {
    let fd = fd.as_raw_fd();
    let use_ = use_.name();
    move |source| FreeBsdError::Limit { fd, use_, call, source }.into()
}

/// Leave `fd` only the rights its use needs (`cap_rights_limit(2)`, then
/// `cap_fcntls_limit(2)` or `cap_ioctls_limit(2)` where the use keeps `CAP_FCNTL` or
/// `CAP_IOCTL`). Works in or out of capability mode; rights only ever shrink.
pub fn limit(fd: BorrowedFd<'_>, use_: &FdUse) -> Result<(), SandboxError> {
    // Check the ioctl list before touching the descriptor, so a bad list changes nothing.
    let ioctls = match use_ {
        FdUse::PfDevice { ioctls } => {
            if ioctls.is_empty() {
                return Err(FreeBsdError::NoIoctls { fd: fd.as_raw_fd() }.into());
            }
            let mut builder = IoctlsBuilder::new();
            for &request in ioctls {
                let request = libc::u_long::try_from(request)
                    .map_err(|_| FreeBsdError::IoctlRange(request))?;
                builder = builder.allow(request);
            }
            Some(builder.finalize())
        }
        _ => None,
    };
    use_.rights().limit(&fd).map_err(limit_err(fd, use_, "cap_rights_limit"))?;
    if let Some(fcntls) = use_.fcntls() {
        fcntls.limit(&fd).map_err(limit_err(fd, use_, "cap_fcntls_limit"))?;
    }
    if let Some(ioctls) = ioctls {
        ioctls.limit(&fd).map_err(limit_err(fd, use_, "cap_ioctls_limit"))?;
    }
    Ok(())
}

/// Enter capability mode (`cap_enter(2)`) and check that the kernel says so. Irreversible
/// and process-wide: every thread, including ones started later. Call last, after
/// [`limit`] and [`drop_to_user`].
pub fn enter_capability_mode() -> Result<(), SandboxError> {
    capsicum::enter().map_err(FreeBsdError::Enter)?;
    match capsicum::get_mode() {
        Ok(true) => Ok(()),
        Ok(false) => Err(FreeBsdError::NotInCapabilityMode.into()),
        Err(e) => Err(FreeBsdError::Enter(e).into()),
    }
}

/// Open `path`, a directory holding Unix sockets the caller will reach with
/// [`connect_unix_at`], and limit the descriptor to [`FdUse::SocketDirectory`]
/// (`CAP_LOOKUP`, `CAP_CONNECTAT`): nothing in it can be opened, listed, created or removed
/// through it. Call before [`enter_capability_mode`].
pub fn open_socket_directory(path: &Path) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| FreeBsdError::OpenDirectory {
            path: path.to_owned(),
            source: io::Error::from(e),
        })?;
    limit(std::os::fd::AsFd::as_fd(&fd), &FdUse::SocketDirectory)?;
    Ok(fd)
}

/// Open `path`, a directory whose files the caller will read with [`read_file_at`] in
/// capability mode, and limit it to [`FdUse::ReadDirectory`]. Call before
/// [`enter_capability_mode`].
pub fn open_read_directory(path: &Path) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| FreeBsdError::OpenDirectory {
            path: path.to_owned(),
            source: io::Error::from(e),
        })?;
    limit(std::os::fd::AsFd::as_fd(&fd), &FdUse::ReadDirectory)?;
    Ok(fd)
}

/// The whole of file `name` in the directory `dir` (from [`open_read_directory`]), read
/// with `openat(2)`; works in capability mode. `name` must be a plain file name, as for
/// [`connect_unix_at`]; a symbolic link is followed only if it stays inside `dir` (capability
/// mode refuses absolute links and `..`).
pub fn read_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain file name", name.to_string_lossy()),
        ));
    }
    let fd = openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    let mut data = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut data)?;
    Ok(data)
}

/// A new blocking, close-on-exec `AF_UNIX` stream socket connected with `connectat(2)` to
/// `name` in the directory `dir` (from [`open_socket_directory`]). Works in capability mode.
/// `name` must be a plain file name (no `/`): capability mode refuses lookups that could
/// leave the directory, so this refuses them first (`ErrorKind::InvalidInput`).
pub fn connect_unix_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain file name", name.to_string_lossy()),
        ));
    }
    let addr = UnixAddr::new(name).map_err(io::Error::from)?;
    let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)?;
    sys::connect_at(dir, std::os::fd::AsFd::as_fd(&sock), &addr)?;
    Ok(sock)
}

/// Whether this process is in capability mode (`cap_sandboxed(3)`; false on a kernel
/// without Capsicum), for `--print-sandbox` and tests.
pub fn in_capability_mode() -> bool {
    capsicum::sandboxed()
}

/// Switch to `user` (a name or a numeric uid, as [`crate::Plan::user`]) for good:
/// supplementary groups reduced to the user's primary group (`setgroups`), then real,
/// effective and saved gid (`setresgid`) and uid (`setresuid`), each checked afterwards,
/// and a final check that neither uid 0 nor gid 0 can be taken back.
///
/// Needs the password database, so it runs before [`enter_capability_mode`]. A process
/// that already is exactly that user is left as it is (started unprivileged); naming
/// `root` (or `0`) explicitly keeps uid 0, as on Linux (for tests and deliberate setups;
/// [`crate::Report::weaknesses`] says so at every start).
///
/// `setgroups` then `setresgid` covers both meanings of `setgroups(2)`: before FreeBSD 15
/// its first entry also set the effective gid; from 15 on it sets supplementary groups only.
pub fn drop_to_user(user: &str) -> Result<(), SandboxError> {
    let found = crate::lookup_user(user)?;
    let (name, uid, gid) = (found.name, found.uid, found.gid);
    if uid.is_root() {
        return Ok(());
    }
    if verify_dropped(uid, gid).is_ok() {
        return Ok(());
    }
    let root = nix::unistd::geteuid().is_root();
    let fail = |step: &'static str| {
        let name = name.clone();
        move |source: Errno| SandboxError::SwitchUser {
            user: name,
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            step,
            source,
            hint: if root {
                ""
            } else {
                "; only root can switch users: start as root, or as this user without --user"
            },
        }
    };
    nix::unistd::setgroups(&[gid]).map_err(fail("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(fail("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
    verify_dropped(uid, gid).map_err(|what| SandboxError::Verify { what })
}

/// Every uid and gid is the user's, the groups are only its primary group, and neither
/// uid 0 nor gid 0 can be taken back. The error says what differs.
fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), String> {
    let uids = nix::unistd::getresuid().map_err(|e| format!("getresuid failing: {e}"))?;
    if [uids.real, uids.effective, uids.saved] != [uid; 3] {
        return Err(format!(
            "uids {}/{}/{} (real/effective/saved), expected {uid}",
            uids.real, uids.effective, uids.saved
        ));
    }
    let gids = nix::unistd::getresgid().map_err(|e| format!("getresgid failing: {e}"))?;
    if [gids.real, gids.effective, gids.saved] != [gid; 3] {
        return Err(format!(
            "gids {}/{}/{} (real/effective/saved), expected {gid}",
            gids.real, gids.effective, gids.saved
        ));
    }
    let groups = nix::unistd::getgroups().map_err(|e| format!("getgroups failing: {e}"))?;
    if groups.iter().any(|g| *g != gid) {
        let shown: Vec<String> = groups.iter().map(ToString::to_string).collect();
        return Err(format!("groups [{}], expected only {gid}", shown.join(", ")));
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("that setuid(0) still succeeds".to_owned());
    }
    if nix::unistd::setgid(Gid::from_raw(0)).is_ok() {
        return Err("that setgid(0) still succeeds".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Rights only: entering capability mode would confine the whole test harness.
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn rights_of(fd: BorrowedFd<'_>) -> FileRights {
        FileRights::from_file(&fd).unwrap()
    }

    #[test]
    fn stream_keeps_io_and_loses_connect() {
        let (a, _b) = UnixStream::pair().unwrap();
        limit(a.as_fd(), &FdUse::Stream).unwrap();
        let rights = rights_of(a.as_fd());
        assert!(rights.is_set(Right::Read) && rights.is_set(Right::Write));
        assert!(rights.is_set(Right::Event) && rights.is_set(Right::Getsockopt));
        assert!(!rights.is_set(Right::Connect) && !rights.is_set(Right::Bind));
        assert!(!rights.is_set(Right::Ioctl));
        assert_eq!(FcntlRights::from_file(&a).unwrap(), FdUse::Stream.fcntls().unwrap());
    }

    #[test]
    fn a_probe_socket_can_only_send_receive_and_wait() {
        let (a, _b) = UnixStream::pair().unwrap();
        limit(a.as_fd(), &FdUse::Probe).unwrap();
        let rights = rights_of(a.as_fd());
        assert!(rights.is_set(Right::Read) && rights.is_set(Right::Write));
        assert!(rights.is_set(Right::Event));
        assert!(!rights.is_set(Right::Connect) && !rights.is_set(Right::Setsockopt));
        assert!(!rights.is_set(Right::Fcntl) && !rights.is_set(Right::Bind));
    }

    #[test]
    fn rights_only_shrink() {
        let (a, _b) = UnixStream::pair().unwrap();
        limit(a.as_fd(), &FdUse::Output).unwrap();
        // Asking for more than is left fails (ENOTCAPABLE) and changes nothing.
        assert!(limit(a.as_fd(), &FdUse::Stream).is_err());
        assert!(!rights_of(a.as_fd()).is_set(Right::Read));
    }

    #[test]
    fn empty_ioctl_list_is_refused_before_limiting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = limit(a.as_fd(), &FdUse::PfDevice { ioctls: vec![] }).unwrap_err();
        assert!(matches!(e, SandboxError::FreeBsd(FreeBsdError::NoIoctls { .. })), "{e}");
        assert!(rights_of(a.as_fd()).is_set(Right::Read));
    }

    #[test]
    fn connectat_reaches_a_socket_in_the_directory_only() {
        let dir = std::env::temp_dir().join(format!("sc-connectat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let d = open_socket_directory(&dir).unwrap();
        assert!(!rights_of(d.as_fd()).is_set(Right::Read));
        assert!(rights_of(d.as_fd()).is_set(Right::Connectat));
        let _client = connect_unix_at(d.as_fd(), OsStr::new("s.sock")).unwrap();
        let _peer = listener.accept().unwrap();
        for bad in ["../s.sock", "a/b", "", ".."] {
            assert!(connect_unix_at(d.as_fd(), OsStr::new(bad)).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_in_capability_mode_in_tests() {
        assert!(!in_capability_mode());
    }
}
