//! The broker's conversation with one client, without I/O.
//!
//! [`Session::handle`] takes one frame's payload (its length already checked by whoever read
//! it) and writes its answers to an [`Output`]: decode, check the meaning, enforce the
//! conversation rules (Hello first, the closed verb table, nothing new while stopping), then
//! act on the backend under the right lock and write the audit line. It opens no socket,
//! reads no clock for decisions and never blocks on a client: the server (`server.rs`) owns
//! sockets, threads, peer credentials and deadlines, and the fuzzer and the hostile-peer tests
//! drive this same code with arbitrary bytes, any uid, and a fake backend.
//!
//! Locks, and why nothing a client does can stall a kill:
//! * mutations run one at a time (`mutation`), so a kill's before/after count is not
//!   disturbed by another kill from this broker;
//! * reads (Count, Snapshot) are limited to one of each kind per uid at a time
//!   ([`ReadGate`]): a peer opening many connections cannot multiply the table walks and
//!   buffers; a second read of the same kind waits briefly, then gets `Busy`;
//! * no backend lock is held while writing to a client: backends that must hold a lock
//!   while listing (pf) buffer the listing first and release the lock before the first
//!   batch is written. Every write has a deadline ([`Output::send_frame`]), a snapshot a total
//!   one ([`Timeouts::snapshot_total`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use statecull_proto::frame::{decode_request, encode_response};
use statecull_proto::text::{clip, clip_message};
use statecull_proto::{
    CheckedRequest, CheckedSelector, ErrorCode, ErrorReply, Hello, HelloReply, KillReport, Limits,
    PROTOCOL_VERSION, Prefix, ProtoError, Request, Response, SnapshotDone, StateRecord, Verb,
};
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::config::Config;
use crate::error::BrokerError;

/// Who is on the other end of a connection (from `SO_PEERCRED` / `getpeereid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 where the platform does not report it.
    pub pid: i32,
}

/// How long the server gives a peer for each step. The defaults are the production values;
/// tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A new connection must say Hello this soon (silent peers cannot hold slots).
    pub hello: Duration,
    /// A connection that said Hello and sends no request for this long is closed
    /// ([`statecull_proto::BROKER_IDLE_TIMEOUT_SECS`]).
    pub idle: Duration,
    /// Once a frame has started, the rest must arrive this soon.
    pub frame: Duration,
    /// Each answer frame must be taken by the client this soon.
    pub write: Duration,
    /// A whole snapshot must be taken by the client this soon (a trickle reader cannot
    /// hold a listing, its thread and its buffer forever).
    pub snapshot_total: Duration,
    /// How long a second Count or Snapshot of the same uid waits for the first.
    pub read_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            hello: Duration::from_secs(10),
            idle: Duration::from_secs(statecull_proto::BROKER_IDLE_TIMEOUT_SECS),
            frame: Duration::from_secs(10),
            write: Duration::from_secs(30),
            snapshot_total: Duration::from_secs(600),
            read_wait: Duration::from_secs(10),
        }
    }
}

/// Where a session's answers go. The server writes to the socket; tests and the fuzzer
/// collect frames.
pub trait Output {
    /// Write one complete frame by `deadline`. An `Err` means the client is gone or too slow:
    /// part of the frame may be out, so nothing more may be written on this connection.
    fn send_frame(&mut self, frame: &[u8], deadline: Instant) -> Result<(), String>;
}

/// What the server does with the connection after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next frame.
    Continue,
    /// Close the connection (malformed frame, client gone, or a write failed).
    Close,
}

/// The two kinds of read a uid may run once at a time each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReadKind {
    Count,
    Snapshot,
}

impl ReadKind {
    fn name(self) -> &'static str {
        match self {
            ReadKind::Count => "count",
            ReadKind::Snapshot => "snapshot",
        }
    }
}

/// One Count and one Snapshot per uid at a time. Table walks cost the broker a full pass
/// each (and a pf snapshot its buffer), so a peer must not multiply them by opening
/// connections; different uids (the engine, an operator) never wait for each other here.
#[derive(Debug)]
pub struct ReadGate {
    running: Mutex<HashSet<(u32, ReadKind)>>,
    freed: Condvar,
}

/// Holds a uid's read slot; dropping it frees the slot.
#[derive(Debug)]
struct ReadTicket<'a> {
    gate: &'a ReadGate,
    key: (u32, ReadKind),
}

impl Drop for ReadTicket<'_> {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock().unwrap_or_else(|p| p.into_inner());
        running.remove(&self.key);
        drop(running);
        self.gate.freed.notify_all();
    }
}

impl ReadGate {
    fn new() -> Self {
        Self { running: Mutex::new(HashSet::new()), freed: Condvar::new() }
    }

    /// Take `uid`'s slot for `kind`, waiting up to `wait` for a running one to finish.
    fn enter(&self, uid: u32, kind: ReadKind, wait: Duration) -> Option<ReadTicket<'_>> {
        let key = (uid, kind);
        let deadline = Instant::now() + wait;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while running.contains(&key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            running = self.freed.wait_timeout(running, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        running.insert(key);
        Some(ReadTicket { gate: self, key })
    }
}

/// Everything sessions share: the configuration, the backend and the locks.
pub struct Broker {
    config: Config,
    backend: Box<dyn Backend>,
    limits: Limits,
    timeouts: Timeouts,
    shutting_down: AtomicBool,
    mutation: Mutex<()>,
    reads: ReadGate,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("backend", &self.backend.info().kind)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(config: Config, backend: Box<dyn Backend>) -> Self {
        let timeouts = config.timeouts;
        Self {
            config,
            backend,
            limits: Limits::PROTOCOL,
            timeouts,
            shutting_down: AtomicBool::new(false),
            mutation: Mutex::new(()),
            reads: ReadGate::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Refuse new mutations from now on (shutdown).
    pub fn stop(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Wait until the mutation running now (if any) has finished and written its audit line.
    pub fn wait_for_mutation(&self) {
        drop(self.mutation.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Encode and send a response; `Err` means the connection must close.
fn send(out: &mut dyn Output, resp: &Response, deadline: Instant) -> Result<(), String> {
    let frame = encode_response(resp).map_err(|e| e.to_string())?;
    out.send_frame(&frame, deadline)
}

/// One client's conversation.
#[derive(Debug)]
pub struct Session<'a> {
    broker: &'a Broker,
    peer: Peer,
    hello: Option<Hello>,
}

impl<'a> Session<'a> {
    pub fn new(broker: &'a Broker, peer: Peer) -> Self {
        Self { broker, peer, hello: None }
    }

    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Has the client said Hello (with the right version)?
    pub fn said_hello(&self) -> bool {
        self.hello.is_some()
    }

    fn client(&self) -> &str {
        self.hello.as_ref().map_or("", |h| h.client.as_str())
    }

    fn reply(&self, out: &mut dyn Output, resp: &Response) -> Flow {
        let deadline = Instant::now() + self.broker.timeouts.write;
        match send(out, resp, deadline) {
            Ok(()) => Flow::Continue,
            Err(e) => {
                debug!(uid = self.peer.uid, pid = self.peer.pid, error = %e, "cannot answer; closing connection");
                Flow::Close
            }
        }
    }

    fn refuse(&self, out: &mut dyn Output, verb: Verb, e: &BrokerError) -> Flow {
        let mut reply = e.reply();
        // An error reply must fit one frame, and a log line must not carry an attack.
        reply.message = clip_message(reply.message);
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
        self.reply(out, &Response::Error(reply))
    }

    /// Handle one frame's payload. The caller closes the connection on [`Flow::Close`].
    pub fn handle(&mut self, payload: &[u8], out: &mut dyn Output) -> Flow {
        let request = match decode_request(payload) {
            Ok(r) => r,
            Err(e) => {
                let message = clip_message(e.to_string());
                warn!(uid = self.peer.uid, pid = self.peer.pid, error = %message, "malformed request; closing connection");
                let deadline = Instant::now() + self.broker.timeouts.write;
                let _ =
                    send(out, &Response::Error(ErrorReply { code: e.code(), message }), deadline);
                return Flow::Close;
            }
        };
        self.handle_request(request, out)
    }

    fn handle_request(&mut self, request: Request, out: &mut dyn Output) -> Flow {
        let broker = self.broker;
        let verb = request.verb();
        if broker.is_stopping() && verb.is_mutation() {
            let e = BrokerError::Refused {
                code: ErrorCode::ShuttingDown,
                message: "the broker is stopping".into(),
            };
            return self.refuse(out, verb, &e);
        }
        // Hello first, before anything about the request is judged (what the backend
        // offers included: a peer that has not said Hello learns nothing about it).
        if verb != Verb::Hello && self.hello.is_none() {
            let e = BrokerError::Refused {
                code: ErrorCode::HelloRequired,
                message: "send Hello first".into(),
            };
            return self.refuse(out, verb, &e);
        }
        // The one decision about meaning: length, every value, what the backend offers.
        let caps = broker.backend.info().capabilities;
        let request = match request.check(&broker.limits, &caps) {
            Ok(r) => r,
            Err(e) => return self.refuse(out, verb, &self.explain(e)),
        };
        if let CheckedRequest::Hello(hello) = request {
            return self.hello(hello, out);
        }
        if self.hello.is_none() {
            let e = BrokerError::Refused {
                code: ErrorCode::HelloRequired,
                message: "send Hello first".into(),
            };
            return self.refuse(out, verb, &e);
        }
        match request {
            CheckedRequest::Hello(_) => Flow::Continue,
            CheckedRequest::Snapshot { selector } => self.snapshot(selector.as_ref(), out),
            CheckedRequest::Count { selectors } => {
                let Some(_one_per_uid) = self.enter_read(ReadKind::Count) else {
                    return self.refuse(out, verb, &self.busy_reading(ReadKind::Count));
                };
                match broker.backend.count(&selectors) {
                    Ok(c) => self.reply(out, &Response::Count(c)),
                    Err(e) => self.refuse(out, verb, &e),
                }
            }
            CheckedRequest::KillMatching { selectors, match_opposite } => {
                let what = describe(&selectors);
                self.mutate(out, verb, &what, |b, protected| {
                    b.kill_matching(&selectors, match_opposite, protected)
                })
            }
            CheckedRequest::KillHandles { handles, match_opposite } => {
                let twins = if match_opposite { " and their twins" } else { "" };
                let what = format!("{} handle(s){twins}", handles.len());
                self.mutate(out, verb, &what, |b, protected| {
                    b.kill_handles(&handles, match_opposite, protected)
                })
            }
            CheckedRequest::Flush { interface } => {
                let what = interface
                    .as_ref()
                    .map_or("all states".to_owned(), |i| format!("interface {i}"));
                self.mutate(out, verb, &what, |b, protected| b.flush(interface.as_ref(), protected))
            }
            // Read-only and cheap (one kernel call on a lane of its own): no read gate.
            CheckedRequest::RulesetTicket => match broker.backend.ruleset_ticket() {
                Ok(t) => self.reply(out, &Response::RulesetTicket(t)),
                Err(e) => self.refuse(out, verb, &e),
            },
        }
    }

    /// A refusal for the client, with the backend's own advice where it has some ("select a
    /// gateway's connections by its ct mark") instead of the generic sentence.
    fn explain(&self, e: ProtoError) -> BrokerError {
        let ProtoError::Unsupported { what, supported } = &e else {
            return BrokerError::Request(e);
        };
        let backend = self.broker.backend.as_ref();
        BrokerError::Unsupported(match backend.unsupported_hint(*what) {
            Some(hint) => format!("{hint} (supported: {supported})"),
            None => format!(
                "the {} backend does not support {what} (supported: {supported})",
                backend.info().kind
            ),
        })
    }

    fn enter_read(&self, kind: ReadKind) -> Option<ReadTicket<'a>> {
        self.broker.reads.enter(self.peer.uid, kind, self.broker.timeouts.read_wait)
    }

    fn busy_reading(&self, kind: ReadKind) -> BrokerError {
        BrokerError::Refused {
            code: ErrorCode::Busy,
            message: format!(
                "another {} of uid {} is still running; each user runs one at a time, try again",
                kind.name(),
                self.peer.uid
            ),
        }
    }

    fn hello(&mut self, hello: Hello, out: &mut dyn Output) -> Flow {
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.reply(
                out,
                &Response::Error(ErrorReply {
                    code: ErrorCode::VersionMismatch,
                    message: format!(
                        "client speaks protocol {}, this broker speaks {PROTOCOL_VERSION}",
                        hello.protocol_version
                    ),
                }),
            );
        }
        debug!(uid = self.peer.uid, pid = self.peer.pid, client = %clip(&hello.client), "hello");
        self.hello = Some(hello);
        let broker = self.broker;
        let reply = HelloReply {
            protocol_version: PROTOCOL_VERSION,
            broker_version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: broker.backend.info(),
            limits: broker.limits,
            protected: broker.config.protected.clone(),
        };
        self.reply(out, &Response::Hello(reply))
    }

    fn snapshot(&mut self, selector: Option<&CheckedSelector>, out: &mut dyn Output) -> Flow {
        let Some(_one_per_uid) = self.enter_read(ReadKind::Snapshot) else {
            return self.refuse(out, Verb::Snapshot, &self.busy_reading(ReadKind::Snapshot));
        };
        let broker = self.broker;
        let started = Instant::now();
        let total_deadline = started + broker.timeouts.snapshot_total;
        let write = broker.timeouts.write;
        let batch = broker.limits.max_snapshot_batch as usize;
        let mut client_gone = false;
        let mut sink = |records: Vec<StateRecord>| -> Result<(), String> {
            let deadline = (Instant::now() + write).min(total_deadline);
            send(out, &Response::SnapshotBatch(records), deadline).inspect_err(|_| {
                client_gone = true;
            })
        };
        let result = broker.backend.snapshot(selector, batch, &mut sink);
        if client_gone {
            debug!(
                uid = self.peer.uid,
                pid = self.peer.pid,
                "snapshot client stopped reading or ran out of time; closing"
            );
            return Flow::Close;
        }
        match result {
            Ok(records) => self.reply(
                out,
                &Response::SnapshotDone(SnapshotDone { records, elapsed_us: micros(started) }),
            ),
            Err(e) => self.refuse(out, Verb::Snapshot, &e),
        }
    }

    /// Run a mutation under the mutation lock and write its audit line.
    fn mutate(
        &mut self,
        out: &mut dyn Output,
        verb: Verb,
        what: &str,
        op: impl FnOnce(&dyn Backend, &[Prefix]) -> Result<KillReport, BrokerError>,
    ) -> Flow {
        let broker = self.broker;
        let result = {
            let _one_at_a_time = broker.mutation.lock().unwrap_or_else(|p| p.into_inner());
            op(broker.backend.as_ref(), &broker.config.protected)
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
                self.reply(out, &Response::Killed(report))
            }
            Err(e) => self.refuse(out, verb, &e),
        }
    }
}

fn describe(selectors: &[CheckedSelector]) -> String {
    selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" | ")
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
