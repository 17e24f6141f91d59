//! Readiness for the service manager: the sd_notify protocol (sd_notify(3)) in a few lines,
//! without libsystemd. `NOTIFY_SOCKET` names a datagram Unix socket, a path (`/run/...`) or,
//! on Linux, an abstract name (`@...`); each notification is one datagram of `KEY=VALUE`
//! lines.
//!
//! The socket is connected at start-up, before confinement (afterwards the broker may create
//! no socket at all, the engine only ones it dials, and neither may look up paths), and only
//! sent on later: a `send` on a connected socket is allowed by both seccomp lists (`sendto`)
//! and by Landlock's scoping of abstract sockets (it checks the connect, not later sends to
//! the same peer). systemd's `NotifyAccess=main` accepts it: the daemon is the main process.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use crate::ServiceError;

/// Where notifications go, parsed from `NOTIFY_SOCKET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket in the filesystem (absolute path).
    Path(PathBuf),
    /// An abstract socket (Linux), the name without the leading `@`.
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parse `NOTIFY_SOCKET`'s value. systemd also knows `vsock:` addresses (virtual machines);
    /// they are refused with a reason, as is anything relative or empty.
    pub fn parse(value: &OsStr) -> Result<Self, ServiceError> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        let bad = |why| ServiceError::NotifyAddress { value: value.to_string_lossy().into(), why };
        match bytes.first() {
            Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Ok(NotifyAddr::Abstract(bytes[1..].to_vec())),
            Some(b'@') => Err(bad("an abstract socket needs a name after '@'")),
            None => Err(bad("empty")),
            _ if bytes.starts_with(b"vsock") => {
                Err(bad("vsock addresses are not supported (only a path or @abstract name)"))
            }
            _ => Err(bad("expected an absolute path or @abstract name")),
        }
    }
}

/// The daemon's line to its service manager; does nothing when none asked (no
/// `NOTIFY_SOCKET`: started by hand, by rc.d, or by a unit without `Type=notify`).
#[derive(Debug)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn none() -> Self {
        Self { socket: None }
    }

    /// From `NOTIFY_SOCKET`, connected now (call before confinement). A value that is set
    /// but unusable is an error: the service manager waits for `READY=1` and would kill the
    /// daemon at its start timeout, so saying why at once is better. Unset it to start the
    /// daemon by hand from a shell that inherited it.
    pub fn from_env() -> Result<Self, ServiceError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(Self::none()),
            Some(v) => Self::connect(&NotifyAddr::parse(&v)?, &v.to_string_lossy()),
        }
    }

    /// Connect to `addr` (`shown` names it in errors).
    pub fn connect(addr: &NotifyAddr, shown: &str) -> Result<Self, ServiceError> {
        let err = |source| ServiceError::NotifyConnect { value: shown.to_owned(), source };
        let socket = UnixDatagram::unbound().map_err(err)?;
        match addr {
            NotifyAddr::Path(p) => socket.connect(p).map_err(err)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
                socket.connect_addr(&a).map_err(err)?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            NotifyAddr::Abstract(_) => {
                return Err(ServiceError::NotifyAddress {
                    value: shown.to_owned(),
                    why: "abstract sockets exist only on Linux",
                });
            }
        }
        // sd_notify blocks until the manager has room; bounded here, so a stuck manager
        // cannot hold a stopping daemon.
        socket.set_write_timeout(Some(Duration::from_secs(2))).map_err(err)?;
        Ok(Self { socket: Some(socket) })
    }

    /// Is a service manager listening?
    pub fn active(&self) -> bool {
        self.socket.is_some()
    }

    /// The socket's descriptor (FreeBSD: to limit its rights before capability mode).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(AsFd::as_fd)
    }

    /// `READY=1` with a status line: the daemon serves.
    pub fn ready(&self, status: &str) -> Result<(), ServiceError> {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)))
    }

    /// `STOPPING=1` with a status line: the daemon has begun to stop.
    pub fn stopping(&self, status: &str) -> Result<(), ServiceError> {
        self.send(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)))
    }

    /// A status line alone (`systemctl status` shows it).
    pub fn status(&self, status: &str) -> Result<(), ServiceError> {
        self.send(&format!("STATUS={}\n", one_line(status)))
    }

    fn send(&self, message: &str) -> Result<(), ServiceError> {
        let Some(socket) = &self.socket else { return Ok(()) };
        let what = message.lines().next().unwrap_or_default().to_owned();
        match socket.send(message.as_bytes()) {
            Ok(_) => Ok(()),
            Err(source) => Err(ServiceError::NotifySend { what, source }),
        }
    }
}

/// A status is one line of the message: newlines would start other assignments.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert_eq!(
            NotifyAddr::parse(OsStr::new("/run/systemd/notify")).unwrap(),
            NotifyAddr::Path("/run/systemd/notify".into())
        );
        assert_eq!(
            NotifyAddr::parse(OsStr::new("@sd-notify/1")).unwrap(),
            NotifyAddr::Abstract(b"sd-notify/1".to_vec())
        );
        for bad in ["", "@", "run/notify", "vsock:2:1234", "vsock-stream:2:1234"] {
            let e = NotifyAddr::parse(OsStr::new(bad)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("NOTIFY_SOCKET={bad:?}: ")), "{e}");
        }
    }

    fn receive(server: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_status_and_stopping_are_one_datagram_each() {
        let dir = std::env::temp_dir().join(format!("statecull-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(&NotifyAddr::Path(path.clone()), "test").unwrap();
        assert!(n.active());
        n.ready("serving\non x").unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=serving on x\n");
        n.status("busy").unwrap();
        assert_eq!(receive(&server), "STATUS=busy\n");
        n.stopping("SIGTERM").unwrap();
        assert_eq!(receive(&server), "STOPPING=1\nSTATUS=SIGTERM\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_sockets_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("statecull-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let value = format!("@{name}");
        let n = Notifier::connect(&NotifyAddr::parse(OsStr::new(&value)).unwrap(), &value).unwrap();
        n.ready("up").unwrap();
        assert_eq!(receive(&server), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn no_socket_means_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::none();
        assert!(!n.active());
        n.ready("x").unwrap();
        n.stopping("x").unwrap();
    }

    #[test]
    fn an_unreachable_socket_is_an_error_naming_it() {
        let e = Notifier::connect(
            &NotifyAddr::Path("/nonexistent/notify".into()),
            "/nonexistent/notify",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("NOTIFY_SOCKET=\"/nonexistent/notify\": cannot connect"),
            "{e}"
        );
    }
}
