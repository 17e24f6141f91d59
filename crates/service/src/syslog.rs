//! `--log-target syslog`: the daemons write to the local syslog socket themselves, one
//! datagram per event with its own priority, instead of having daemon(8) forward standard
//! error at one severity (`daemon -l facility -s severity` sets one for every line).
//!
//! The message is RFC 3164 without a timestamp, `<PRI>TAG[PID]: MESSAGE`, facility daemon:
//! FreeBSD's syslogd takes a message without one as "only a TAG and a MSG" and stamps it on
//! arrival (`parsemsg_rfc3164` in usr.sbin/syslogd/syslogd.c), so the daemon needs no time
//! zone (unreadable once confined). The socket is connected before confinement; if syslogd
//! goes away (restart), a line that cannot be sent goes to standard error instead, so
//! nothing is lost silently (a connected socket cannot be re-connected by path in capability
//! mode).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::ServiceError;
use crate::log::Priority;

/// The local syslog socket: FreeBSD's syslogd listens on `/var/run/log`; on Linux it is
/// `/dev/log` (rsyslog, syslog-ng, or journald's forwarder).
pub const DEFAULT_PATH: &str =
    if cfg!(target_os = "freebsd") { "/var/run/log" } else { "/dev/log" };

/// syslog facility `LOG_DAEMON` (3), shifted as in the PRI value.
const FACILITY_DAEMON: u8 = 3 << 3;

/// The header of one message: `<PRI>TAG[PID]: `.
pub fn header(priority: Priority, tag: &str, pid: u32) -> String {
    format!("<{}>{tag}[{pid}]: ", FACILITY_DAEMON | priority.severity())
}

/// A datagram socket connected to syslogd.
#[derive(Debug)]
pub struct SyslogSocket {
    socket: UnixDatagram,
    path: String,
}

impl SyslogSocket {
    /// Connect to [`DEFAULT_PATH`].
    pub fn connect_default() -> Result<Self, ServiceError> {
        Self::connect(Path::new(DEFAULT_PATH))
    }

    /// Connect to the syslog socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ServiceError> {
        let err = |source| ServiceError::Syslog { path: path.display().to_string(), source };
        let socket = UnixDatagram::unbound().map_err(err)?;
        socket.connect(path).map_err(err)?;
        // A stuck syslogd must not stall the daemon for long.
        socket.set_write_timeout(Some(std::time::Duration::from_secs(1))).map_err(err)?;
        Ok(Self { socket, path: path.display().to_string() })
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    /// The socket's path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// tracing's writer for syslog: each event (one `write_all` of its formatted text) is one
/// datagram, without its final newline.
#[derive(Clone, Debug)]
pub struct SyslogWriter(Arc<SyslogSocket>);

impl SyslogWriter {
    pub fn new(socket: Arc<SyslogSocket>) -> Self {
        Self(socket)
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let msg = buf.strip_suffix(b"\n").unwrap_or(buf);
        if self.0.socket.send(msg).is_err() {
            // syslogd restarted or the line is too long: standard error (daemon(8) or the
            // terminal) rather than nothing.
            let mut err = std::io::stderr().lock();
            err.write_all(msg)?;
            err.write_all(b"\n")?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogWriter;
    fn make_writer(&'a self) -> SyslogWriter {
        self.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn one_datagram_per_event_without_the_newline() {
        let dir = std::env::temp_dir().join(format!("statecull-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let mut w = SyslogWriter::new(Arc::new(SyslogSocket::connect(&path).unwrap()));
        let line = format!("{}engine stopping\n", header(Priority::WARNING, "statecull-engine", 7));
        w.write_all(line.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<28>statecull-engine[7]: engine stopping");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_syslog_socket_is_an_error_naming_it() {
        let e = SyslogSocket::connect(Path::new("/nonexistent/statecull/log")).unwrap_err();
        assert!(e.to_string().starts_with("syslog socket /nonexistent/statecull/log: "), "{e}");
    }
}
