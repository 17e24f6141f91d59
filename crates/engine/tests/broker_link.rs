//! The engine's broker link against a fake broker speaking the real frame protocol
//! (`statecull_proto::frame`): background requests (status, plan, metrics) can never queue in
//! front of a kill, and a connection idle longer than the link's limit is replaced before the
//! broker's idle timeout could close it under a request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statecull_testkit::TempDir;

use statecull_engine::broker::{BACKGROUND_SLOTS, BrokerLink};
use statecull_engine::state::Shared;
use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CountReply, HEADER_LEN, HelloReply,
    KillPath, KillReport, Limits, PROTOCOL_VERSION, Request, Response, Selector, SelectorField,
};

/// What the fake broker saw, in order of arrival ("hello", "count", "kill", "flush"), plus
/// markers the test writes itself.
type Log = Arc<Mutex<Vec<String>>>;

struct FakeBroker {
    path: PathBuf,
    log: Log,
    connections: Arc<AtomicUsize>,
    _dir: TempDir,
}

fn hello_reply() -> HelloReply {
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

fn report() -> KillReport {
    KillReport {
        requested: 0,
        killed: 1,
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

fn send(s: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    s.write_all(&encode_response(r).unwrap())
}

/// One connection: answer Hello at once, each Count after `count_delay`; after Hello, close
/// the connection when no request arrives for `idle_close` (as the real broker does after
/// `BROKER_IDLE_TIMEOUT_SECS`).
fn serve_connection(
    mut s: UnixStream,
    log: &Log,
    count_delay: Duration,
    idle_close: Option<Duration>,
) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if s.read_exact(&mut header).is_err() {
            return; // peer gone, or idle too long: close
        }
        let Ok(len) = payload_len(header) else { return };
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let Ok(req) = decode_request(&payload) else { return };
        let answer = match req {
            Request::Hello(_) => {
                log.lock().unwrap().push("hello".into());
                s.set_read_timeout(idle_close).unwrap();
                Response::Hello(hello_reply())
            }
            Request::Count { selectors } => {
                log.lock().unwrap().push("count".into());
                std::thread::sleep(count_delay);
                let n = selectors.len();
                Response::Count(CountReply {
                    per_selector: vec![1; n],
                    matching_any: n as u64,
                    table_entries: 100,
                    elapsed_us: 1,
                })
            }
            Request::KillMatching { .. } => {
                log.lock().unwrap().push("kill".into());
                Response::Killed(report())
            }
            Request::Flush { .. } => {
                log.lock().unwrap().push("flush".into());
                Response::Killed(report())
            }
            other => panic!("the fake broker does not serve {other:?}"),
        };
        if send(&mut s, &answer).is_err() {
            return;
        }
    }
}

impl FakeBroker {
    fn start(count_delay: Duration, idle_close: Option<Duration>) -> Self {
        let dir = TempDir::new("link").unwrap();
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log: Log = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (l, c) = (Arc::clone(&log), Arc::clone(&connections));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let l = Arc::clone(&l);
                std::thread::spawn(move || serve_connection(s, &l, count_delay, idle_close));
            }
        });
        FakeBroker { path, log, connections, _dir: dir }
    }

    fn mark(&self, what: &str) {
        self.log.lock().unwrap().push(what.into());
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Two gateways with external health, recognised by NAT address, route and interface.
const POLICY: &str = r#"
[routing]
confirm = "signal"
settle_timeout = "60s"
sweep_delay = "500ms"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
rt_addr = "198.51.100.254"
nat_addr = ["198.51.100.1"]
interface = "igb1"

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
rt_addr = "203.0.113.254"
nat_addr = ["203.0.113.1"]
interface = "igb2"

[[group]]
name = "failover"
members = [ { gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 } ]
on_down = "gateway"
"#;

fn shared(broker: &Path) -> Arc<Shared> {
    let policy = statecull_policy::load::parse(POLICY, "test policy").unwrap();
    let (shared, _decisions, _metrics) = Shared::new(policy, BrokerLink::new(broker.to_owned()));
    Arc::new(shared)
}

fn kill_selector() -> Selector {
    Selector { gateway: Some("198.51.100.254".parse().unwrap()), ..Default::default() }
}

/// Issue 3: 40 `status` callers whose counts time out (each Count takes the fake broker
/// 500 ms, the callers give up after 3 s), then a kill: it must reach the broker behind at
/// most the one background request already in flight, not behind every abandoned count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_status_counts_never_queue_in_front_of_a_kill() {
    let broker = FakeBroker::start(Duration::from_millis(500), None);
    let shared = shared(&broker.path);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let s = Arc::clone(&shared);
        // What `status` does: one Count for every gateway's selectors, given up after 3 s.
        callers.spawn(async move { statecull_engine::control::states_per_gateway(&s).await });
    }
    let mut answered = 0;
    while let Some(r) = callers.join_next().await {
        if r.unwrap().iter().all(Option::is_some) {
            answered += 1;
        }
    }
    // Some were answered while they waited; most gave up.
    assert!(answered < 40, "{answered} of 40 answered: the broker is too fast for this test");

    broker.mark("kill issued");
    let sel = kill_selector();
    let r = shared.broker.call(move |c| c.kill_matching(vec![sel], false)).await.unwrap();
    assert_eq!(r.killed, 1);

    let log = broker.log();
    let issued = log.iter().position(|e| e == "kill issued").unwrap();
    let kill = log.iter().position(|e| e == "kill").unwrap();
    let counts_in_front = log[issued..kill].iter().filter(|e| *e == "count").count();
    assert!(
        counts_in_front <= BACKGROUND_SLOTS,
        "the kill waited behind {counts_in_front} abandoned counts: {log:?}"
    );
    // And nothing abandoned is sent after the kill either.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = broker.log();
    assert!(
        after[kill..].iter().filter(|e| *e == "count").count() == 0,
        "abandoned counts were still sent: {after:?}"
    );
}

/// A background request whose caller gave up while the connection was busy is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_request_whose_caller_left_is_dropped_unsent() {
    let broker = FakeBroker::start(Duration::from_secs(2), None);
    let link = Arc::new(BrokerLink::new(broker.path.clone()));
    // The executor's slow count holds the connection for 2 s.
    let busy = {
        let link = Arc::clone(&link);
        tokio::spawn(async move { link.call(|c| c.count(vec![kill_selector()])).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            link.call_background(|c| c.count(vec![kill_selector()])),
        )
        .await;
        assert!(r.is_err(), "the connection was busy: the caller must have timed out");
    }
    busy.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = broker.log();
    assert_eq!(log.iter().filter(|e| *e == "count").count(), 1, "{log:?}");
    // The slot is free again.
    let r = link.call_background(|c| c.count(vec![])).await.unwrap();
    assert_eq!(r.table_entries, 100);
}

/// The broker closes a connection idle after Hello (`BROKER_IDLE_TIMEOUT_SECS`); the engine
/// must not send a kill, least of all a flush (never resent), on a connection idle that
/// long. With a link limit of 500 ms and a broker closing after 1.5 s, a flush sent after
/// 2 s of silence goes out on a fresh connection and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_replaced_before_the_broker_would_close_it() {
    let broker = FakeBroker::start(Duration::ZERO, Some(Duration::from_millis(1500)));
    let link =
        Arc::new(BrokerLink::with_idle_limit(broker.path.clone(), Duration::from_millis(500)));
    link.call(|c| Ok(c.hello().clone())).await.unwrap();
    // Reused while fresh: one connection so far.
    let r = link.call(|c| c.kill_matching(vec![kill_selector()], false)).await.unwrap();
    assert_eq!(r.killed, 1);
    assert_eq!(broker.connections.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = link.call(|c| c.flush(None)).await;
    assert!(r.is_ok(), "the flush raced the broker's idle close: {r:?}");
    assert_eq!(broker.connections.load(Ordering::SeqCst), 2, "{:?}", broker.log());
    assert_eq!(broker.log().iter().filter(|e| *e == "flush").count(), 1);
}
