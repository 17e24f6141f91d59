//! What the engine's in-process tests share. An in-process fake broker speaking the real
//! frame protocol (`statecull_proto::frame`), one thread per connection, that logs what it
//! is asked, per connection, in order of arrival. A Count takes as long as the test says,
//! unless the client hangs up first (as the engine does when it abandons a background
//! count); kills answer at once with a per-selector report. The engine against it (shared
//! state and executor, with its timer and control socket when a test wants them), control
//! requests as the CLI sends them, and the two-WAN policy most of these tests run.
#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statecull_control::{ControlReply, ControlRequest, Event, GatewayAction};
use statecull_engine::broker::BrokerLink;
use statecull_engine::executor::Executor;
use statecull_engine::state::Shared;
use statecull_testkit::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CountReply, HEADER_LEN, HelloReply,
    KillPath, KillReport, Limits, PROTOCOL_VERSION, Request, Response, SelectorField,
};

/// How the fake broker answers.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// How long a Count takes (cut short if the client hangs up).
    pub count_delay: Duration,
    /// The `elapsed_us` a Count reports (the broker's own time).
    pub count_elapsed_us: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { count_delay: Duration::ZERO, count_elapsed_us: 1 }
    }
}

pub struct FakeBroker {
    pub path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    _dir: TempDir,
}

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
                kernel_tuple_flush: vec![AddressFamily::Ipv4, AddressFamily::Ipv6],
                kernel_tuple_broken: vec![],
                listing_only: vec![],
                match_opposite: false,
                flush_by_interface: false,
                ruleset_ticket: false,
            },
        },
        limits: Limits::PROTOCOL,
        protected: vec![],
    }
}

/// Selector `i` of a kill killed `10 * (i + 1)` states.
pub fn killed_by_selector(i: usize) -> u64 {
    10 * (i as u64 + 1)
}

fn report(selectors: usize) -> KillReport {
    let per_selector: Vec<u64> = (0..selectors).map(killed_by_selector).collect();
    KillReport {
        requested: 0,
        killed: per_selector.iter().sum(),
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: true,
        path: KillPath::DumpAndDelete,
        table_passes: 1,
        elapsed_us: 1,
        note: None,
        per_selector,
    }
}

/// Wait `delay`, or until the client hangs up. True if it is still there.
fn wait_unless_hung_up(s: &mut UnixStream, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let alive = loop {
        match s.read(&mut byte) {
            Ok(0) => break false,
            // A client sends nothing while its request is answered.
            Ok(_) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break false,
        }
        if Instant::now() >= deadline {
            break true;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    alive && s.set_nonblocking(false).is_ok()
}

fn serve(mut s: UnixStream, conn: usize, log: &Mutex<Vec<String>>, how: Behaviour) {
    let note = |what: String| log.lock().unwrap().push(format!("{what}#{conn}"));
    loop {
        let mut header = [0u8; HEADER_LEN];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let Ok(len) = payload_len(header) else { return };
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let Ok(req) = decode_request(&payload) else { return };
        let answer = match req {
            Request::Hello(_) => {
                note("hello".into());
                Response::Hello(hello_reply())
            }
            Request::Count { selectors } => {
                note(format!("count:{}", selectors.len()));
                if !wait_unless_hung_up(&mut s, how.count_delay) {
                    note("count-dropped".into());
                    return;
                }
                note("count-answered".into());
                let n = selectors.len();
                Response::Count(CountReply {
                    per_selector: vec![1; n],
                    matching_any: n as u64,
                    table_entries: 100,
                    elapsed_us: how.count_elapsed_us,
                })
            }
            Request::KillMatching { selectors, .. } => {
                note(format!("kill:{}", selectors.len()));
                Response::Killed(report(selectors.len()))
            }
            Request::Flush { .. } => {
                note("flush".into());
                Response::Killed(report(0))
            }
            other => panic!("the fake broker does not serve {other:?}"),
        };
        if s.write_all(&encode_response(&answer).unwrap()).is_err() {
            return;
        }
    }
}

impl FakeBroker {
    pub fn start(how: Behaviour) -> Self {
        let dir = TempDir::new("lanes").unwrap();
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (l, c) = (Arc::clone(&log), Arc::clone(&connections));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
                let l = Arc::clone(&l);
                std::thread::spawn(move || serve(s, conn, &l, how));
            }
        });
        FakeBroker { path, log, connections, _dir: dir }
    }

    /// What the broker was asked, in order: `verb#connection` (`count:N`, `kill:N` with
    /// the number of selectors; `count-answered`, `count-dropped` when a count ended).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Entries whose verb (before `#`) is `verb`.
    pub fn count_of(&self, verb: &str) -> usize {
        self.log().iter().filter(|e| e.split('#').next() == Some(verb)).count()
    }

    /// Entries starting with `prefix`, in order.
    pub fn entries(&self, prefix: &str) -> Vec<String> {
        self.log().into_iter().filter(|e| e.starts_with(prefix)).collect()
    }

    /// Kill requests so far.
    pub fn kills(&self) -> usize {
        self.entries("kill").len()
    }

    /// Position of the first entry starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.log().iter().position(|e| e.starts_with(prefix))
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Wait (up to 10 s) for an entry starting with `prefix`.
    pub async fn wait_for(&self, prefix: &str) {
        self.wait_within(prefix, Duration::from_secs(10)).await;
    }

    /// Wait up to `limit` for an entry starting with `prefix`.
    pub async fn wait_within(&self, prefix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.position(prefix).is_none() {
            assert!(Instant::now() < deadline, "no {prefix} within {limit:?}: {:?}", self.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The engine's shared state for `policy` (TOML) against `broker`, with its executor running.
pub fn engine(broker: &FakeBroker, policy: &str) -> Arc<Shared> {
    let policy = statecull_policy::load::parse(policy, "test policy").unwrap();
    let (shared, decisions, _metrics) = Shared::new(policy, BrokerLink::new(broker.path.clone()));
    let shared = Arc::new(shared);
    tokio::spawn(Executor::new(Arc::clone(&shared), decisions, None).run());
    shared
}

/// Tick the engine's timer every 100 ms, as the daemon does (hold-downs, routing deadlines).
pub fn run_timer(shared: &Arc<Shared>) {
    let s = Arc::clone(shared);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            s.tick();
        }
    });
}

/// Serve the engine's control socket at `dir/engine.sock`; its path.
pub fn serve_control(shared: &Arc<Shared>, dir: &TempDir) -> PathBuf {
    let path = dir.path().join("engine.sock");
    let listener = statecull_engine::control::bind(&path).unwrap();
    tokio::spawn(statecull_engine::control::serve(listener, Arc::clone(shared)));
    path
}

/// How long a control request may take before the test fails.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One request line (without its newline) on a fresh control connection; the engine's
/// answer, within `within`.
pub async fn ask_within(path: &Path, line: &str, within: Duration) -> ControlReply {
    let mut s = BufReader::new(tokio::net::UnixStream::connect(path).await.unwrap());
    s.get_mut().write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(within, s.read_line(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    serde_json::from_str(&answer).unwrap()
}

/// One request line (without its newline); the engine's answer.
pub async fn ask_line(path: &Path, line: &str) -> ControlReply {
    ask_within(path, line, ANSWER_WITHIN).await
}

/// `req` as the CLI sends it; the engine's answer.
pub async fn ask(path: &Path, req: &ControlRequest) -> ControlReply {
    ask_line(path, &serde_json::to_string(req).unwrap()).await
}

/// `statecull gateway NAME ACTION`; the engine's message (anything but `Done` fails).
pub async fn verdict(path: &Path, name: &str, action: GatewayAction) -> String {
    match ask(path, &ControlRequest::Gateway { name: name.into(), action }).await {
        ControlReply::Done { message } => message,
        other => panic!("{other:?}"),
    }
}

/// The value of an event's field `name`.
pub fn field<'e>(e: &'e Event, name: &str) -> Option<&'e str> {
    e.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The policy most of these tests run: states never counted in the background, no sweep;
/// WAN1 (tier 1, `igb1`, 198.51.100.254) and WAN2 (tier 2, `igb2`, 203.0.113.254, external
/// health, recognised by its route) in the group `failover`, which kills a failed
/// gateway's states.
#[derive(Clone, Copy, Debug)]
pub struct TwoWans<'a> {
    /// The `[routing]` lines before `sweep_delay`: `confirm` and `settle_timeout`.
    pub routing: &'a str,
    /// WAN1's settings after its address, its health source first. They start at line 14
    /// (errors name lines).
    pub wan1: &'a str,
    /// WAN1's `[gateway.states]` lines.
    pub wan1_states: &'a str,
    /// More settings of the group.
    pub group: &'a str,
}

/// Routing confirmed after 50 ms.
pub const CONFIRM_DELAY_50MS: &str = "confirm = \"delay\"\nsettle_timeout = \"50ms\"";

impl TwoWans<'_> {
    pub fn policy(&self) -> String {
        let TwoWans { routing, wan1, wan1_states, group } = self;
        format!(
            r#"
[engine]
states_refresh = "off"

[routing]
{routing}
sweep_delay = "0s"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
{wan1}
[gateway.states]
{wan1_states}

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
rt_addr = "203.0.113.254"

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
{group}"#
        )
    }
}
