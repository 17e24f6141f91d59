//! Fixtures shared by the session and driver tests: broker answers, records, frames, and an
//! in-process fake broker speaking the real frame protocol.
#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use statecull_testkit::TempDir;

use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CountReply, ErrorCode, ErrorReply,
    HEADER_LEN, HelloReply, KillPath, KillReport, L4, Limits, PROTOCOL_VERSION, Request, Response,
    SelectorField, SnapshotDone, StateDetail, StateHandle, StateKey, StateRecord,
};

pub fn hello_reply() -> HelloReply {
    HelloReply {
        protocol_version: PROTOCOL_VERSION,
        broker_version: "fake".into(),
        backend: BackendInfo {
            kind: BackendKind::PfModel,
            kernel: "fake".into(),
            capabilities: Capabilities {
                selector_fields: SelectorField::ALL.to_vec(),
                kernel_mark_flush: false,
                kernel_tuple_flush: vec![AddressFamily::Ipv4],
                kernel_tuple_broken: vec![],
                listing_only: vec![],
                match_opposite: true,
                flush_by_interface: false,
                ruleset_ticket: false,
            },
        },
        limits: Limits::PROTOCOL,
        protected: vec![],
    }
}

pub fn report(killed: u64) -> KillReport {
    KillReport {
        requested: 0,
        killed,
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: true,
        path: KillPath::DumpAndDelete,
        table_passes: 1,
        elapsed_us: 1,
        note: None,
        per_selector: Vec::new(),
    }
}

pub fn count(per_selector: Vec<u64>) -> CountReply {
    let any = per_selector.iter().sum();
    CountReply { per_selector, matching_any: any, table_entries: 100, elapsed_us: 1 }
}

pub fn refusal(code: ErrorCode) -> ErrorReply {
    ErrorReply { code, message: format!("fake {code}") }
}

/// A distinct conntrack record per `i`.
pub fn record(i: u16) -> StateRecord {
    let key = |a: [u8; 4], b: [u8; 4], sp: u16, dp: u16| StateKey {
        proto: 6,
        src: IpAddr::from(a),
        dst: IpAddr::from(b),
        l4: L4::Ports { src: sp, dst: dp },
    };
    let orig = key([192, 0, 2, 10], [198, 18, 0, 1], 10_000 + i, 443);
    StateRecord {
        handle: StateHandle::Conntrack { orig, id: u32::from(i), zone: 0 },
        key: orig,
        detail: StateDetail::Conntrack {
            reply: key([198, 18, 0, 1], [198, 51, 100, 1], 443, 10_000 + i),
            mark: 1,
            zone: 0,
            status: 0,
            tcp_state: Some(3),
        },
        expires_in_secs: Some(100),
        counters: None,
    }
}

pub fn records(from: u16, n: u16) -> Vec<StateRecord> {
    (from..from + n).map(record).collect()
}

/// A response as the broker writes it.
pub fn frame(r: &Response) -> Vec<u8> {
    encode_response(r).unwrap()
}

/// How the fake broker treats a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers everything (see [`serve`]).
    Normal,
    /// Refuses the peer before reading anything, as a broker out of slots does, and closes.
    RefuseHello,
    /// Accepts and never says a word.
    Silent,
    /// Answers the Hello, then closes on the first request.
    CloseAfterHello,
    /// As `Normal`, but every answer after the Hello comes 500 ms late.
    Slow,
}

/// A fake broker on a Unix socket in a scratch directory, one thread per connection. It
/// logs the verbs it receives.
pub struct FakeBroker {
    pub path: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl FakeBroker {
    pub fn start(mode: Mode) -> Self {
        let dir = TempDir::new("client").unwrap();
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let l = Arc::clone(&l);
                std::thread::spawn(move || serve(s, mode, &l));
            }
        });
        FakeBroker { path, log, _dir: dir }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn read_request(s: &mut UnixStream) -> Option<Request> {
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header).ok()?;
    let len = payload_len(header).ok()?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    decode_request(&payload).ok()
}

/// Normal mode:
/// * Hello → Hello;
/// * Count → one match per selector; a Count with no selector is refused (`Busy`), and the
///   connection stays open, as a real broker's refusals leave it;
/// * KillMatching / KillHandles / Flush → a report killing as many as selectors/handles
///   (a flush: 7), written one byte at a time (partial frames);
/// * Snapshot → 3 batches of 1,000 records and Done, all in one write (several frames per
///   read); a snapshot with a selector gets one batch and then a `Backend` error ending it.
fn serve(mut s: UnixStream, mode: Mode, log: &Mutex<Vec<String>>) {
    match mode {
        Mode::RefuseHello => {
            let _ = s.write_all(&frame(&Response::Error(refusal(ErrorCode::Busy))));
            std::thread::sleep(Duration::from_millis(250));
            return;
        }
        Mode::Silent => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        Mode::Normal | Mode::CloseAfterHello | Mode::Slow => {}
    }
    while let Some(req) = read_request(&mut s) {
        log.lock().unwrap().push(req.verb().to_string());
        if mode == Mode::CloseAfterHello && !matches!(req, Request::Hello(_)) {
            return;
        }
        if mode == Mode::Slow && !matches!(req, Request::Hello(_)) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let bytes = match req {
            Request::Hello(_) => frame(&Response::Hello(hello_reply())),
            Request::Count { selectors } if selectors.is_empty() => {
                frame(&Response::Error(refusal(ErrorCode::Busy)))
            }
            Request::Count { selectors } => {
                frame(&Response::Count(count(vec![1; selectors.len()])))
            }
            Request::KillMatching { selectors, .. } => {
                let f = frame(&Response::Killed(report(selectors.len() as u64)));
                for b in f {
                    if s.write_all(&[b]).is_err() {
                        return;
                    }
                }
                continue;
            }
            Request::KillHandles { handles, .. } => {
                frame(&Response::Killed(report(handles.len() as u64)))
            }
            Request::Flush { .. } => frame(&Response::Killed(report(7))),
            Request::RulesetTicket => {
                frame(&Response::RulesetTicket(statecull_proto::RulesetTicket {
                    ticket: 5,
                    rules: 3,
                }))
            }
            Request::Snapshot { selector: Some(_) } => {
                let mut out = frame(&Response::SnapshotBatch(records(0, 10)));
                out.extend(frame(&Response::Error(refusal(ErrorCode::Backend))));
                out
            }
            Request::Snapshot { selector: None } => {
                let mut out = Vec::new();
                for b in 0..3 {
                    out.extend(frame(&Response::SnapshotBatch(records(b * 1000, 1000))));
                }
                out.extend(frame(&Response::SnapshotDone(SnapshotDone {
                    records: 3000,
                    elapsed_us: 1,
                })));
                out
            }
        };
        if s.write_all(&bytes).is_err() {
            return;
        }
    }
}
