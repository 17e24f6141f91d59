//! The FreeBSD routing socket (`PF_ROUTE`, read-only use): asks the kernel for the default
//! route through a gateway (`RTM_GET`) and waits for default-route changes. Everything it
//! reads and writes is built and decoded by `rtsock.rs` (pure, tested on Linux); this is the
//! thin I/O around it, on tokio's reactor (non-blocking, no extra thread), without `unsafe`:
//! the descriptor nix opens is handed to tokio as a `UnixDatagram` (`From<OwnedFd>` and
//! `from_std`, tokio's safe registration; `AsyncFd::new` is deprecated as unsound), of which
//! only `recv` and `send` are used: recv(2)/send(2), which a routing socket answers like any
//! datagram socket. The socket is opened by [`RouteSocket::open`] before the
//! engine confines itself. On other systems [`RouteSocket::open`] fails.
//!
//! **Type-checked for FreeBSD only; never run on a FreeBSD kernel.**

#[cfg(target_os = "freebsd")]
pub use freebsd::RouteSocket;

#[cfg(target_os = "freebsd")]
mod freebsd {
    use std::net::IpAddr;
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use tokio::net::UnixDatagram;
    use tokio::time::timeout;

    use crate::error::EngineError;
    use crate::routes::rtsock::{self, ESRCH, Message, RtMsg};

    /// Room for the largest routing message (a route message with eight sockaddrs is well
    /// under 1 KiB; interface announcements are smaller).
    const RECV_BUF: usize = 16 * 1024;
    /// No `RTM_GET` answer should take this long.
    const GET_TIMEOUT: Duration = Duration::from_secs(5);

    fn bad(what: impl Into<String>) -> EngineError {
        EngineError::Routes(what.into())
    }

    /// A routing socket in the engine's FIB (the main table unless the engine was started
    /// with `setfib`).
    #[derive(Debug)]
    pub struct RouteSocket {
        /// The `PF_ROUTE` socket (see the module comment for why this type).
        sock: UnixDatagram,
        seq: i32,
        pid: i32,
        buf: Vec<u8>,
        /// A default-route change (or lost messages) seen while waiting for an answer: the
        /// next [`RouteSocket::changed`] returns at once.
        pending_change: bool,
    }

    /// What one read brought.
    enum Read {
        Messages(Vec<Message>),
        /// The kernel dropped messages for lack of buffer space (`ENOBUFS`).
        Overflow,
    }

    impl RouteSocket {
        /// Open the routing socket (needs no privilege). Inside the tokio runtime, before the
        /// engine confines itself.
        pub fn open() -> Result<RouteSocket, EngineError> {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(bad("RouteSocket::open must run inside the tokio runtime"));
            }
            let fd = socket(
                AddressFamily::Route,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| bad(format!("open the routing socket: {e}")))?;
            let sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))
                .map_err(|e| bad(format!("register the routing socket: {e}")))?;
            let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            Ok(RouteSocket { sock, seq: 0, pid, buf: vec![0; RECV_BUF], pending_change: false })
        }

        async fn read(&mut self) -> Result<Read, EngineError> {
            loop {
                match self.sock.recv(&mut self.buf).await {
                    Ok(n) => {
                        let got = self.buf.get(..n).unwrap_or_default();
                        // A message that does not decode is "something changed": ask again.
                        return Ok(match rtsock::parse(got) {
                            Ok(m) => Read::Messages(m),
                            Err(e) => {
                                tracing::debug!("routing socket: {e}");
                                Read::Overflow
                            }
                        });
                    }
                    Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                        return Ok(Read::Overflow);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(bad(format!("routing socket read: {e}"))),
                }
            }
        }

        /// Ask for the default route of `gw`'s family through `gw` (`RTM_GET`, exact match);
        /// the answer as the kernel gave it (`rtm_errno` `ESRCH` when there is none).
        pub async fn get_default(&mut self, gw: IpAddr) -> Result<RtMsg, EngineError> {
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            let request = rtsock::get_default_request(gw, seq);
            match self.sock.send(&request).await {
                Ok(n) if n == request.len() => {}
                Ok(n) => return Err(bad(format!("short routing socket write: {n} bytes"))),
                // No such route: the kernel also echoes the request with rtm_errno set; it
                // is skipped later by its sequence number.
                Err(e) if e.raw_os_error() == Some(Errno::ESRCH as i32) => {
                    return Ok(no_route(seq));
                }
                Err(e) => return Err(bad(format!("routing socket RTM_GET: {e}"))),
            }
            let pid = self.pid;
            let wait = async {
                loop {
                    match self.read().await? {
                        Read::Overflow => self.pending_change = true,
                        Read::Messages(msgs) => {
                            for m in msgs {
                                let Message::Route(r) = m else { continue };
                                if rtsock::is_reply(&r, seq, pid) {
                                    return Ok(r);
                                }
                                if r.is_default_change() {
                                    self.pending_change = true;
                                }
                            }
                        }
                    }
                }
            };
            match timeout(GET_TIMEOUT, wait).await {
                Ok(r) => r,
                Err(_) => Err(bad(format!("no RTM_GET answer within {GET_TIMEOUT:?}"))),
            }
        }

        /// Resolve when a default route was added, deleted or changed since the last call
        /// (or messages were lost: "ask again"). Cancel-safe.
        pub async fn changed(&mut self) -> Result<(), EngineError> {
            if std::mem::take(&mut self.pending_change) {
                return Ok(());
            }
            loop {
                match self.read().await? {
                    Read::Overflow => return Ok(()),
                    Read::Messages(msgs) => {
                        if msgs
                            .iter()
                            .any(|m| matches!(m, Message::Route(r) if r.is_default_change()))
                        {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The answer `RTM_GET` gives when no default route goes via the gateway.
    fn no_route(seq: i32) -> RtMsg {
        RtMsg {
            msg_type: rtsock::RTM_GET,
            index: 0,
            flags: 0,
            pid: 0,
            seq,
            errno: ESRCH,
            dst: None,
            gateway: None,
            prefix_len: None,
        }
    }
}

#[cfg(not(target_os = "freebsd"))]
mod other {
    use std::net::IpAddr;

    use crate::error::EngineError;
    use crate::routes::rtsock::RtMsg;

    /// The routing socket is FreeBSD's; [`RouteSocket::open`] fails elsewhere.
    #[derive(Debug)]
    pub struct RouteSocket {
        never: std::convert::Infallible,
    }

    impl RouteSocket {
        pub fn open() -> Result<RouteSocket, EngineError> {
            Err(EngineError::Routes(
                "confirm = \"route-socket\" needs FreeBSD's routing socket; on Linux use \
                 \"rtnetlink\""
                    .into(),
            ))
        }

        pub async fn get_default(&mut self, _gw: IpAddr) -> Result<RtMsg, EngineError> {
            match self.never {}
        }

        pub async fn changed(&mut self) -> Result<(), EngineError> {
            match self.never {}
        }
    }
}

#[cfg(not(target_os = "freebsd"))]
pub use other::RouteSocket;
