//! The listener and the per-connection threads: sockets, peer credentials, connection slots
//! and deadlines. What a frame means is decided in [`crate::dispatch`], which does no I/O.
//!
//! Synchronous std code: one thread accepts, one thread serves each admitted connection.
//! For every frame: check the length, then let the session decode, check and act.
//! Every read and write has a deadline, so no peer (silent, slow, or gone) holds a slot, a
//! thread or a lock for long:
//! * before Hello: [`Timeouts::hello`] from connecting; after Hello, [`Timeouts::idle`]
//!   without a request closes the connection;
//! * a frame that has started must be complete within [`Timeouts::frame`];
//! * each answer must be taken within [`Timeouts::write`], a whole snapshot within
//!   [`Timeouts::snapshot_total`].
//!
//! Refused peers (not allowed, or no slot) get one short answer written without blocking,
//! and at most one log line per uid per 10 s.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use statecull_proto::frame::{encode_response, payload_len};
use statecull_proto::{ErrorCode, ErrorReply, HEADER_LEN, Response};
use tracing::{debug, info, warn};

use crate::admission::{LogLine, RefusalLog, Slot, Slots};
use crate::backend::Backend;
use crate::config::Config;
use crate::dispatch::{Broker, Flow, Output, Session, Timeouts};
use crate::error::BrokerError;

pub use crate::dispatch::Peer;

/// How often a waiting connection checks for shutdown.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How long shutdown waits for requests in flight (a large kill) to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Refused peers are logged at most once per uid per this window.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

#[cfg(target_os = "linux")]
fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() })
}

#[cfg(not(target_os = "linux"))]
fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let (uid, gid) = nix::unistd::getpeereid(stream).map_err(io::Error::from)?;
    Ok(Peer { uid: uid.as_raw(), gid: gid.as_raw(), pid: 0 })
}

/// State shared by the accept loop and the connection threads.
struct Shared {
    broker: Broker,
    slots: Mutex<Slots>,
    /// Connection threads running (for the drain at shutdown).
    active: AtomicUsize,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    socket: PathBuf,
    refusals: RefusalLog,
    /// Refused connections waiting to be closed (see [`turn_away`]).
    lingering: std::collections::VecDeque<(Instant, UnixStream)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("socket", &self.socket).finish()
    }
}

/// Bind the socket without following links (see `statecull_sandbox::socket`): refuse to
/// steal it from a live broker, replace a stale one, refuse a directory others can write,
/// and give it mode 0660 and the configured group before it appears at its path.
fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, BrokerError> {
    use statecull_sandbox::socket::{SocketSpec, bind_unix_listener};
    bind_unix_listener(&SocketSpec {
        path,
        mode: 0o660,
        group: gid,
        owner_name: "a running broker",
    })
    .map_err(|e| BrokerError::Config(e.to_string()))
}

/// Refused connections kept open this long after their answer, so a client that is still
/// sending its Hello is not reset before it reads why it was refused.
const TURNED_AWAY_LINGER: Duration = Duration::from_millis(250);
/// At most this many refused connections linger; under a flood the oldest close early.
const MAX_LINGERING: usize = 64;

/// Write a short answer to a peer that is turned away, without ever blocking the accept
/// loop: one non-blocking send (`MSG_DONTWAIT`; a refusal fits any socket buffer). The
/// connection then lingers briefly in `lingering` before it is closed.
fn turn_away(
    stream: UnixStream,
    reply: ErrorReply,
    lingering: &mut std::collections::VecDeque<(Instant, UnixStream)>,
) {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    if let Ok(frame) = encode_response(&Response::Error(reply)) {
        let _ = send(stream.as_raw_fd(), &frame, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
    }
    if lingering.len() >= MAX_LINGERING {
        lingering.pop_front();
    }
    lingering.push_back((Instant::now() + TURNED_AWAY_LINGER, stream));
}

impl Server {
    /// The listening socket, for confinement (Capsicum rights on FreeBSD).
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub fn bind(config: Config, backend: Box<dyn Backend>) -> Result<Self, BrokerError> {
        let listener = bind(&config.socket, config.socket_gid)?;
        let socket = config.socket.clone();
        let slots = Slots::new(
            config.max_connections,
            config.max_connections_per_user(),
            config.engine_uid(),
        );
        Ok(Self {
            listener,
            socket,
            shared: Arc::new(Shared {
                broker: Broker::new(config, backend),
                slots: Mutex::new(slots),
                active: AtomicUsize::new(0),
            }),
            refusals: RefusalLog::new(REFUSAL_LOG_WINDOW),
            lingering: std::collections::VecDeque::new(),
        })
    }

    /// Serve until `stop` becomes readable (the signal thread writes to it), then stop
    /// accepting, remove the socket and wait for requests in flight.
    pub fn run(mut self, stop: impl AsFd) -> Result<(), BrokerError> {
        let broker = &self.shared.broker;
        info!(
            socket = %self.socket.display(),
            backend = %broker.backend().info().kind,
            protected = broker.config().protected.len(),
            max_connections = broker.config().max_connections,
            "broker listening"
        );
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            // Wake up to close lingering refused connections on time.
            let timeout = if self.lingering.is_empty() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(100u8)
            };
            let polled = poll(&mut fds, timeout);
            let now = Instant::now();
            while self.lingering.front().is_some_and(|(until, _)| *until <= now) {
                self.lingering.pop_front();
            }
            match polled {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(BrokerError::io("poll", e.into())),
            }
            if fds[1].any().unwrap_or(false) {
                break;
            }
            if !fds[0].any().unwrap_or(false) {
                continue;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EMFILE and friends: log, back off briefly, keep serving.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.lingering.clear();
        let broker = &self.shared.broker;
        broker.stop();
        info!("shutting down: no new connections");
        let _ = std::fs::remove_file(&self.socket);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.shared.active.load(Ordering::SeqCst);
        if left > 0 {
            warn!(connections = left, "stopping with connections still open");
        }
        // Never exit in the middle of a kill: wait for the one running (if any) to finish and
        // write its audit line. No new kill can start: they are refused while stopping.
        broker.wait_for_mutation();
        info!("broker stopped");
        Ok(())
    }

    /// Check who is calling, give them a slot and a thread, or turn them away.
    fn admit(&mut self, stream: UnixStream) {
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; closing");
                return;
            }
        };
        let config = self.shared.broker.config();
        if !config.allows(peer.uid, peer.gid) {
            if let LogLine::Write { left_out } = self.refusals.note(peer.uid, Instant::now()) {
                warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid,
                    refused_since_last_line = left_out,
                    "peer not allowed; closing"
                );
            }
            // Who else may connect is configuration: a refused peer is not told.
            turn_away(
                stream,
                ErrorReply {
                    code: ErrorCode::PermissionDenied,
                    message: format!(
                        "uid {} gid {} may not use this broker (see the broker's allow_users and allow_groups)",
                        peer.uid, peer.gid
                    ),
                },
                &mut self.lingering,
            );
            return;
        }
        let admitted = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()).admit(peer.uid);
        let slot = match admitted {
            Ok(slot) => slot,
            Err(no) => {
                if let LogLine::Write { left_out } = self.refusals.note(peer.uid, Instant::now()) {
                    warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        open = no.open,
                        of_this_user = no.of_this_user,
                        refused_since_last_line = left_out,
                        "{}; connection refused",
                        no.reason
                    );
                }
                turn_away(
                    stream,
                    ErrorReply {
                        code: ErrorCode::Busy,
                        message: format!("{} ({} open); try again", no.reason, no.open),
                    },
                    &mut self.lingering,
                );
                return;
            }
        };
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new().name(format!("conn-{}", peer.pid)).spawn({
            let shared = Arc::clone(&self.shared);
            move || {
                let _guard = ConnGuard { shared: &shared, slot };
                serve(&shared.broker, stream, peer);
            }
        });
        if let Err(e) = spawned {
            // The closure (and its guard) was dropped with the error: slot and count are back.
            warn!(error = %e, "cannot start a connection thread");
        }
    }
}

/// Gives the slot back and counts the thread out however it ends.
struct ConnGuard<'a> {
    shared: &'a Shared,
    slot: Slot,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner()).release(self.slot);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes frames to the socket, each by its deadline.
struct SocketOutput<'s> {
    stream: &'s UnixStream,
}

impl Output for SocketOutput<'_> {
    fn send_frame(&mut self, mut frame: &[u8], deadline: Instant) -> Result<(), String> {
        while !frame.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the client did not take the answer in time".into());
            }
            self.stream.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
            match self.stream.write(frame) {
                Ok(0) => return Err("the client closed the connection".into()),
                Ok(n) => frame = &frame[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err("the client did not take the answer in time".into());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

/// Why reading a frame stopped.
enum ReadEnd {
    /// The peer closed the connection between frames.
    Closed,
    /// Shutdown was requested while idle.
    Shutdown,
    /// The connection was idle (or silent before Hello) for too long.
    Idle(&'static str),
    /// The peer broke the protocol or stalled mid-frame.
    Abort(String),
}

/// Serve one connection until it closes.
fn serve(broker: &Broker, stream: UnixStream, peer: Peer) {
    debug!(uid = peer.uid, pid = peer.pid, "connection opened");
    let timeouts = broker.timeouts();
    let mut session = Session::new(broker, peer);
    let opened = Instant::now();
    let mut last_request = opened;
    let mut reader = FrameReader { stream: &stream, broker, timeouts };
    loop {
        let (wait_until, why) = if session.said_hello() {
            (last_request + timeouts.idle, "idle for too long after Hello")
        } else {
            (opened + timeouts.hello, "no Hello in time")
        };
        let payload = match reader.read_frame(wait_until, why) {
            Ok(p) => p,
            Err(ReadEnd::Closed | ReadEnd::Shutdown) => break,
            Err(ReadEnd::Idle(why)) => {
                debug!(uid = peer.uid, pid = peer.pid, why, "closing connection");
                break;
            }
            Err(ReadEnd::Abort(why)) => {
                warn!(uid = peer.uid, pid = peer.pid, why, "closing connection");
                break;
            }
        };
        let mut out = SocketOutput { stream: &stream };
        if session.handle(&payload, &mut out) == Flow::Close {
            break;
        }
        last_request = Instant::now();
    }
    debug!(uid = peer.uid, pid = peer.pid, "connection closed");
}

struct FrameReader<'s> {
    stream: &'s UnixStream,
    broker: &'s Broker,
    timeouts: Timeouts,
}

impl FrameReader<'_> {
    /// Read one frame: header, length check, then exactly that many bytes. The first byte
    /// may be waited for until `wait_until`; the rest must follow within the frame deadline.
    fn read_frame(&mut self, wait_until: Instant, why: &'static str) -> Result<Vec<u8>, ReadEnd> {
        let mut header = [0u8; HEADER_LEN];
        self.wait_first_byte(&mut header[..1], wait_until, why)?;
        let frame_deadline = Instant::now() + self.timeouts.frame;
        self.read_exact_deadline(&mut header[1..], frame_deadline)?;
        let len = match payload_len(header) {
            Ok(l) => l,
            Err(e) => {
                let mut out = SocketOutput { stream: self.stream };
                if let Ok(frame) = encode_response(&Response::Error(ErrorReply::from(&e))) {
                    let _ = out.send_frame(&frame, Instant::now() + self.timeouts.write);
                }
                return Err(ReadEnd::Abort(e.to_string()));
            }
        };
        // The length is bounded (≤ 1 MiB) before this allocation.
        let mut payload = vec![0u8; len];
        self.read_exact_deadline(&mut payload, frame_deadline)?;
        Ok(payload)
    }

    fn wait_first_byte(
        &mut self,
        buf: &mut [u8],
        wait_until: Instant,
        why: &'static str,
    ) -> Result<(), ReadEnd> {
        loop {
            if self.broker.is_stopping() {
                return Err(ReadEnd::Shutdown);
            }
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Idle(why));
            }
            if self.stream.set_read_timeout(Some(left.min(IDLE_TICK))).is_err() {
                return Err(ReadEnd::Abort("cannot set a read timeout".into()));
            }
            match (&mut &*self.stream).read(buf) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(_) => return Ok(()),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Abort(format!("read: {e}"))),
            }
        }
    }

    fn read_exact_deadline(
        &mut self,
        mut buf: &mut [u8],
        deadline: Instant,
    ) -> Result<(), ReadEnd> {
        while !buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Abort("frame not completed in time".into()));
            }
            if self.stream.set_read_timeout(Some(left)).is_err() {
                return Err(ReadEnd::Abort("cannot set a read timeout".into()));
            }
            match (&mut &*self.stream).read(buf) {
                Ok(0) => {
                    return Err(ReadEnd::Abort("peer closed the connection mid-frame".into()));
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Abort(format!("read: {e}"))),
            }
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
