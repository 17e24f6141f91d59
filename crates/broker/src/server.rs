//! The listener and the per-connection request loop.
//!
//! Synchronous std code: one thread accepts, one thread serves each connection (bounded by
//! `max_connections`). For every frame: check the length, then decode, then check the
//! meaning, then act. A frame that does not decode gets an error answer and closes that
//! connection only; a request that decodes but is refused gets an error answer and the
//! connection stays usable.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{
    CheckedSelector, ErrorCode, ErrorReply, HEADER_LEN, Hello, HelloReply, KillReport, Limits,
    PROTOCOL_VERSION, Request, Response, SnapshotDone, Verb,
};
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::config::Config;
use crate::error::BrokerError;

/// Once a frame has started, the rest must arrive within this time.
const FRAME_DEADLINE: Duration = Duration::from_secs(10);
/// How often an idle connection checks for shutdown.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// A client that stops reading its answers is dropped after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight (a large kill) to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection must say Hello this soon, so silent peers cannot hold connection slots.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// A snapshot client may read slowly (a pager), but not forever.
const SNAPSHOT_WRITE_TIMEOUT: Duration = Duration::from_secs(600);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 where the platform does not report it.
    pub pid: i32,
}

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
    config: Config,
    backend: Box<dyn Backend>,
    limits: Limits,
    shutting_down: AtomicBool,
    connections: AtomicUsize,
    /// Mutations run one at a time, so a kill's before/after count is not disturbed by
    /// another kill from this broker.
    mutation: Mutex<()>,
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    socket: PathBuf,
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

impl Server {
    /// The listening socket, for confinement (Capsicum rights on FreeBSD).
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub fn bind(config: Config, backend: Box<dyn Backend>) -> Result<Self, BrokerError> {
        let listener = bind(&config.socket, config.socket_gid)?;
        let socket = config.socket.clone();
        Ok(Self {
            listener,
            socket,
            shared: Arc::new(Shared {
                config,
                backend,
                limits: Limits::PROTOCOL,
                shutting_down: AtomicBool::new(false),
                connections: AtomicUsize::new(0),
                mutation: Mutex::new(()),
            }),
        })
    }

    /// Serve until `stop` becomes readable (the signal thread writes to it), then stop
    /// accepting, remove the socket and wait for requests in flight.
    pub fn run(self, stop: impl AsFd) -> Result<(), BrokerError> {
        info!(
            socket = %self.socket.display(),
            backend = %self.shared.backend.info().kind,
            protected = self.shared.config.protected.len(),
            "broker listening"
        );
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
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
                Ok((stream, _)) => self.spawn(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EMFILE and friends: log, back off briefly, keep serving.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        info!("shutting down: no new connections");
        let _ = std::fs::remove_file(&self.socket);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.shared.connections.load(Ordering::SeqCst);
        if left > 0 {
            warn!(connections = left, "stopping with connections still open");
        }
        // Never exit in the middle of a kill: wait for the one running (if any) to finish and
        // write its audit line. No new kill can start: they are refused while stopping.
        drop(self.shared.mutation.lock().unwrap_or_else(|p| p.into_inner()));
        info!("broker stopped");
        Ok(())
    }

    fn spawn(&self, stream: UnixStream) {
        let shared = Arc::clone(&self.shared);
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; closing");
                return;
            }
        };
        if !shared.config.allows(peer.uid, peer.gid) {
            warn!(uid = peer.uid, gid = peer.gid, pid = peer.pid, "peer not allowed; closing");
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = send(
                &mut s,
                &Response::Error(ErrorReply {
                    code: ErrorCode::PermissionDenied,
                    message: format!(
                        "uid {} gid {} may not use this broker (allowed: root, uids {:?}, gids {:?})",
                        peer.uid, peer.gid, shared.config.allowed_uids, shared.config.allowed_gids
                    ),
                }),
            );
            return;
        }
        let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if n > shared.config.max_connections {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn!(
                uid = peer.uid,
                pid = peer.pid,
                limit = shared.config.max_connections,
                "too many connections"
            );
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = send(
                &mut s,
                &Response::Error(ErrorReply {
                    code: ErrorCode::Busy,
                    message: format!("more than {} connections", shared.config.max_connections),
                }),
            );
            return;
        }
        let spawned = std::thread::Builder::new().name(format!("conn-{}", peer.pid)).spawn({
            let shared = Arc::clone(&shared);
            move || {
                let _guard = ConnGuard(&shared.connections);
                let mut conn = Connection {
                    stream,
                    peer,
                    shared: &shared,
                    hello: None,
                    opened: Instant::now(),
                };
                conn.serve();
            }
        });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn!(error = %e, "cannot start a connection thread");
        }
    }
}

/// Decrements the connection count however the thread ends.
struct ConnGuard<'a>(&'a AtomicUsize);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn send(stream: &mut UnixStream, resp: &Response) -> io::Result<()> {
    let frame = encode_response(resp).map_err(|e| io::Error::other(e.to_string()))?;
    stream.write_all(&frame)
}

/// Why reading a frame stopped.
enum ReadEnd {
    /// The peer closed the connection between frames.
    Closed,
    /// Shutdown was requested while idle.
    Shutdown,
    /// The peer broke the protocol or stalled; already logged.
    Abort(String),
}

struct Connection<'a> {
    stream: UnixStream,
    peer: Peer,
    shared: &'a Shared,
    hello: Option<Hello>,
    opened: Instant,
}

impl Connection<'_> {
    fn serve(&mut self) {
        debug!(uid = self.peer.uid, pid = self.peer.pid, "connection opened");
        if self.stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            return;
        }
        loop {
            let payload = match self.read_frame() {
                Ok(p) => p,
                Err(ReadEnd::Closed) | Err(ReadEnd::Shutdown) => break,
                Err(ReadEnd::Abort(why)) => {
                    warn!(uid = self.peer.uid, pid = self.peer.pid, why, "closing connection");
                    break;
                }
            };
            let request = match decode_request(&payload) {
                Ok(r) => r,
                Err(e) => {
                    warn!(uid = self.peer.uid, pid = self.peer.pid, error = %e, "malformed request; closing connection");
                    let _ = send(&mut self.stream, &Response::Error(ErrorReply::from(&e)));
                    break;
                }
            };
            if self.handle(request).is_err() {
                break;
            }
        }
        debug!(uid = self.peer.uid, pid = self.peer.pid, "connection closed");
    }

    /// Read one frame: header, length check, then exactly that many bytes.
    fn read_frame(&mut self) -> Result<Vec<u8>, ReadEnd> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact_idle(&mut header)?;
        let len = match payload_len(header) {
            Ok(l) => l,
            Err(e) => {
                let _ = send(&mut self.stream, &Response::Error(ErrorReply::from(&e)));
                return Err(ReadEnd::Abort(e.to_string()));
            }
        };
        // The length is bounded (≤ 1 MiB) before this allocation.
        let mut payload = vec![0u8; len];
        self.read_exact_deadline(&mut payload, Instant::now() + FRAME_DEADLINE)?;
        Ok(payload)
    }

    /// Wait for a frame header for as long as the connection is idle; once its first byte
    /// arrived, the rest must follow within the frame deadline.
    fn read_exact_idle(&mut self, buf: &mut [u8]) -> Result<(), ReadEnd> {
        if self.stream.set_read_timeout(Some(IDLE_TICK)).is_err() {
            return Err(ReadEnd::Abort("cannot set a read timeout".into()));
        }
        loop {
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                return Err(ReadEnd::Shutdown);
            }
            if self.hello.is_none() && self.opened.elapsed() > HELLO_DEADLINE {
                return Err(ReadEnd::Abort("no Hello within 10 s".into()));
            }
            match self.stream.read(&mut buf[..1]) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(_) => break,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadEnd::Abort(format!("read: {e}"))),
            }
        }
        self.read_exact_deadline(&mut buf[1..], Instant::now() + FRAME_DEADLINE)
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
            match self.stream.read(buf) {
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

    fn reply(&mut self, resp: &Response) -> Result<(), ()> {
        send(&mut self.stream, resp).map_err(|e| {
            debug!(error = %e, "cannot answer; closing connection");
        })
    }

    fn refuse(&mut self, verb: Verb, e: &BrokerError) -> Result<(), ()> {
        let reply = e.reply();
        if verb.is_mutation() {
            warn!(
                target: "statecull::audit",
                uid = self.peer.uid,
                gid = self.peer.gid,
                pid = self.peer.pid,
                client = self.client(),
                verb = verb.name(),
                code = reply.code.name(),
                error = %reply.message,
                "refused"
            );
        } else {
            debug!(verb = verb.name(), code = reply.code.name(), error = %reply.message, "refused");
        }
        self.reply(&Response::Error(reply))
    }

    fn client(&self) -> &str {
        self.hello.as_ref().map_or("", |h| h.client.as_str())
    }

    /// Handle one decoded request. `Err` closes the connection.
    fn handle(&mut self, request: Request) -> Result<(), ()> {
        let verb = request.verb();
        if self.shared.shutting_down.load(Ordering::SeqCst) && verb.is_mutation() {
            let e = BrokerError::Refused {
                code: ErrorCode::ShuttingDown,
                message: "the broker is stopping".into(),
            };
            return self.refuse(verb, &e);
        }
        let selectors = match request.check(&self.shared.limits) {
            Ok(s) => s,
            Err(e) => return self.refuse(verb, &BrokerError::Request(e)),
        };
        if let Request::Hello(hello) = request {
            return self.hello(hello);
        }
        if self.hello.is_none() {
            let e = BrokerError::Refused {
                code: ErrorCode::HelloRequired,
                message: "send Hello first".into(),
            };
            return self.refuse(verb, &e);
        }
        let info = self.shared.backend.info();
        for s in &selectors {
            if let Some(field) =
                s.fields().into_iter().find(|f| !info.capabilities.selector_fields.contains(f))
            {
                let supported = info
                    .capabilities
                    .selector_fields
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ");
                let e =
                    BrokerError::Unsupported(match self.shared.backend.unsupported_hint(field) {
                        Some(hint) => format!("{hint} (supported: {supported})"),
                        None => format!(
                            "the {} backend cannot select by {field} (supported: {supported})",
                            info.kind
                        ),
                    });
                return self.refuse(verb, &e);
            }
        }
        match request {
            Request::Hello(_) => Ok(()),
            Request::Snapshot { .. } => self.snapshot(selectors.first()),
            Request::Count { .. } => match self.shared.backend.count(&selectors) {
                Ok(c) => self.reply(&Response::Count(c)),
                Err(e) => self.refuse(verb, &e),
            },
            Request::KillMatching { match_opposite, .. } => {
                let what = describe(&selectors);
                self.mutate(verb, &what, |b, protected| {
                    b.kill_matching(&selectors, match_opposite, protected)
                })
            }
            Request::KillHandles { handles } => {
                let what = format!("{} handle(s)", handles.len());
                self.mutate(verb, &what, |b, protected| b.kill_handles(&handles, protected))
            }
            Request::Flush { interface } => {
                let what = interface
                    .as_ref()
                    .map_or("all states".to_owned(), |i| format!("interface {i}"));
                self.mutate(verb, &what, |b, protected| b.flush(interface.as_ref(), protected))
            }
        }
    }

    fn hello(&mut self, hello: Hello) -> Result<(), ()> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.reply(&Response::Error(ErrorReply {
                code: ErrorCode::VersionMismatch,
                message: format!(
                    "client speaks protocol {}, this broker speaks {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            }));
        }
        debug!(uid = self.peer.uid, pid = self.peer.pid, client = %hello.client, "hello");
        self.hello = Some(hello);
        let reply = HelloReply {
            protocol_version: PROTOCOL_VERSION,
            broker_version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: self.shared.backend.info(),
            limits: self.shared.limits,
            protected: self.shared.config.protected.clone(),
        };
        self.reply(&Response::Hello(reply))
    }

    fn snapshot(&mut self, selector: Option<&CheckedSelector>) -> Result<(), ()> {
        let started = Instant::now();
        let batch = self.shared.limits.max_snapshot_batch as usize;
        if self.stream.set_write_timeout(Some(SNAPSHOT_WRITE_TIMEOUT)).is_err() {
            return Err(());
        }
        let stream = &mut self.stream;
        let mut client_gone = false;
        let mut sink = |records: Vec<statecull_proto::StateRecord>| -> Result<(), String> {
            send(stream, &Response::SnapshotBatch(records)).map_err(|e| {
                client_gone = true;
                e.to_string()
            })
        };
        let result = self.shared.backend.snapshot(selector, batch, &mut sink);
        if client_gone {
            // Part of a frame may be out: nothing more can be said on this stream.
            debug!(
                uid = self.peer.uid,
                pid = self.peer.pid,
                "snapshot client stopped reading; closing"
            );
            return Err(());
        }
        if self.stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
            return Err(());
        }
        match result {
            Ok(records) => self.reply(&Response::SnapshotDone(SnapshotDone {
                records,
                elapsed_us: micros(started),
            })),
            Err(e) => self.refuse(Verb::Snapshot, &e),
        }
    }

    /// Run a mutation under the mutation lock and write its audit line.
    fn mutate(
        &mut self,
        verb: Verb,
        what: &str,
        op: impl FnOnce(&dyn Backend, &[statecull_proto::Prefix]) -> Result<KillReport, BrokerError>,
    ) -> Result<(), ()> {
        let result = {
            let _one_at_a_time = self.shared.mutation.lock().unwrap_or_else(|p| p.into_inner());
            op(self.shared.backend.as_ref(), &self.shared.config.protected)
        };
        match result {
            Ok(report) => {
                // A kill that stopped part way still changed the table: it is audited with
                // what it did, and said to be partial.
                let partial = !report.exact && report.first_error.is_some() || report.failed > 0;
                info!(
                    target: "statecull::audit",
                    uid = self.peer.uid,
                    gid = self.peer.gid,
                    pid = self.peer.pid,
                    client = self.client(),
                    verb = verb.name(),
                    selector = what,
                    killed = report.killed,
                    not_found = report.not_found,
                    spared = report.spared,
                    failed = report.failed,
                    exact = report.exact,
                    path = report.path.name(),
                    table_passes = report.table_passes,
                    elapsed_us = report.elapsed_us,
                    error = report.first_error.as_deref(),
                    note = report.note.as_deref(),
                    "{}",
                    if partial { "states partially killed" } else { "states killed" }
                );
                self.reply(&Response::Killed(report))
            }
            Err(e) => self.refuse(verb, &e),
        }
    }
}

fn describe(selectors: &[CheckedSelector]) -> String {
    selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" | ")
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
