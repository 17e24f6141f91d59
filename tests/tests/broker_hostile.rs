//! The hostile-peer suite: what a compromised engine or a careless local user could do to the
//! broker, and what must hold. In-process: the broker's sans-IO dispatcher with a fake
//! backend (any uid, any bytes, no root), its server on a socket in a scratch directory, and
//! the real pf backend over the pf model where the backend's meaning matters (protected
//! prefixes). Process-level only for signals. Nothing here needs root; where root changes
//! what a test can do (a peer that is not allowed), it re-runs itself as `nobody`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statecull_broker::backend::Backend;
use statecull_broker::backend::pf::PfBackend;
use statecull_broker::config::Config;
use statecull_broker::dispatch::{Broker, Flow, Output, Peer, Session, Timeouts};
use statecull_broker::fake::{Call, FakeBackend};
use statecull_broker::server::Server;
use statecull_pf::client::PfClient;
use statecull_pf::model_device::{ModelDevice, Release};
use statecull_pf::table_gen::{Spec, router_table};
use statecull_proto::frame::{decode_response, encode_request};
use statecull_proto::{
    BackendKind, ErrorCode, Hello, IfName, Label, PROTOCOL_VERSION, Prefix, Request, Response,
    Selector, StateHandle,
};
use statecull_tests::daemons::model_broker_command;
use statecull_tests::{ChildGuard, TempDir};

// ---------------------------------------------------------------------------------------
// Helpers

const ENGINE: Peer = Peer { uid: 998, gid: 998, pid: 4242 };
const OTHER: Peer = Peer { uid: 1001, gid: 1001, pid: 4343 };

/// Frames a session wrote.
#[derive(Default)]
struct Frames(Vec<Vec<u8>>);

impl Output for Frames {
    fn send_frame(&mut self, frame: &[u8], _deadline: Instant) -> Result<(), String> {
        self.0.push(frame.to_vec());
        Ok(())
    }
}

impl Frames {
    fn responses(&self) -> Vec<Response> {
        self.0
            .iter()
            .map(|f| {
                assert!(f.len() >= 4 && f.len() - 4 <= statecull_proto::MAX_FRAME_LEN as usize);
                decode_response(&f[4..]).unwrap()
            })
            .collect()
    }
    fn last(&self) -> Response {
        self.responses().pop().expect("an answer")
    }
}

fn payload(req: &Request) -> Vec<u8> {
    encode_request(req).unwrap()[4..].to_vec()
}

fn hello() -> Request {
    Request::Hello(Hello { protocol_version: PROTOCOL_VERSION, client: "hostile test".into() })
}

fn error_code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn fake_broker(fake: &FakeBackend, config: Config) -> Broker {
    Broker::new(config, Box::new(fake.clone()))
}

fn nat_selector() -> Selector {
    Selector { nat_addr: Some("198.51.100.1".parse().unwrap()), ..Selector::default() }
}

/// Say Hello on a fresh session and check the answer.
fn greeted<'a>(broker: &'a Broker, peer: Peer) -> Session<'a> {
    let mut s = Session::new(broker, peer);
    let mut out = Frames::default();
    assert_eq!(s.handle(&payload(&hello()), &mut out), Flow::Continue);
    assert!(matches!(out.last(), Response::Hello(_)));
    s
}

/// Log lines written while `f` runs on this thread.
fn captured_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

// ---------------------------------------------------------------------------------------
// Framing and decoding (in-process, fake backend)

#[test]
fn garbage_unknown_variants_and_trailing_bytes_are_malformed_and_close() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let mut trailing = payload(&hello());
    trailing.push(0);
    let mut truncated = payload(&Request::Count { selectors: vec![nat_selector()] });
    truncated.truncate(truncated.len() - 2);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("unknown variant", vec![200, 1, 2, 3]),
        ("random", (0..512u32).map(|i| (i * 7919 % 251) as u8).collect()),
        ("trailing byte", trailing),
        ("truncated", truncated),
        ("huge length inside", vec![1, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    ];
    for (what, bytes) in cases {
        // Before and after Hello: the answer is the same.
        for said_hello in [false, true] {
            let mut s =
                if said_hello { greeted(&broker, ENGINE) } else { Session::new(&broker, ENGINE) };
            let mut out = Frames::default();
            assert_eq!(s.handle(&bytes, &mut out), Flow::Close, "{what}");
            assert_eq!(error_code(&out.last()), ErrorCode::Malformed, "{what}");
        }
    }
    assert!(fake.calls().is_empty(), "malformed frames reached the backend: {:?}", fake.calls());
}

#[test]
fn every_verb_before_hello_is_refused_and_never_reaches_the_backend() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let requests = [
        Request::Snapshot { selector: None },
        Request::Count { selectors: vec![nat_selector()] },
        Request::KillMatching { selectors: vec![nat_selector()], match_opposite: false },
        Request::KillHandles {
            handles: vec![StateHandle::Pf { id: 1, creator_id: 0 }],
            match_opposite: false,
        },
        Request::Flush { interface: None },
        Request::RulesetTicket,
    ];
    let mut s = Session::new(&broker, ENGINE);
    for r in &requests {
        let mut out = Frames::default();
        assert_eq!(s.handle(&payload(r), &mut out), Flow::Continue);
        assert_eq!(error_code(&out.last()), ErrorCode::HelloRequired, "{r:?}");
    }
    // A Hello with another protocol version does not open the door either.
    let mut out = Frames::default();
    let wrong =
        Request::Hello(Hello { protocol_version: PROTOCOL_VERSION + 1, client: "x".into() });
    s.handle(&payload(&wrong), &mut out);
    assert_eq!(error_code(&out.last()), ErrorCode::VersionMismatch);
    for r in &requests {
        let mut out = Frames::default();
        s.handle(&payload(r), &mut out);
        assert_eq!(error_code(&out.last()), ErrorCode::HelloRequired, "{r:?}");
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

/// A conntrack-like backend has no filter ruleset: its capabilities say so in Hello, and the
/// verb is refused as unsupported by the check, never reaching the backend; the connection
/// stays usable.
#[test]
fn ruleset_ticket_is_refused_without_a_ruleset_and_the_connection_stays_usable() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let mut s = Session::new(&broker, ENGINE);
    let mut out = Frames::default();
    s.handle(&payload(&hello()), &mut out);
    let Response::Hello(h) = out.last() else { panic!("no hello") };
    assert!(!h.backend.capabilities.ruleset_ticket);
    let mut out = Frames::default();
    assert_eq!(s.handle(&payload(&Request::RulesetTicket), &mut out), Flow::Continue);
    let Response::Error(e) = out.last() else { panic!("expected a refusal") };
    assert_eq!(e.code, ErrorCode::Unsupported);
    assert!(e.message.contains("ruleset"), "{}", e.message);
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    let mut out = Frames::default();
    s.handle(&payload(&Request::Count { selectors: vec![] }), &mut out);
    assert!(matches!(out.last(), Response::Count(_)));
}

#[test]
fn oversized_and_empty_requests_are_refused_before_the_backend() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let mut s = greeted(&broker, ENGINE);
    let too_many_selectors = vec![nat_selector(); statecull_proto::MAX_SELECTORS as usize + 1];
    let too_many_handles =
        vec![StateHandle::Pf { id: 7, creator_id: 1 }; statecull_proto::MAX_HANDLES as usize + 1];
    let cases = [
        (Request::Count { selectors: too_many_selectors.clone() }, ErrorCode::TooLarge),
        (
            Request::KillMatching { selectors: too_many_selectors, match_opposite: false },
            ErrorCode::TooLarge,
        ),
        (
            Request::KillHandles { handles: too_many_handles, match_opposite: false },
            ErrorCode::TooLarge,
        ),
        (
            Request::KillMatching { selectors: vec![], match_opposite: false },
            ErrorCode::EmptySelector,
        ),
        (
            Request::KillMatching { selectors: vec![Selector::default()], match_opposite: false },
            ErrorCode::EmptySelector,
        ),
        (
            Request::KillHandles { handles: vec![], match_opposite: false },
            ErrorCode::InvalidArgument,
        ),
        (
            Request::KillHandles {
                handles: vec![StateHandle::Pf { id: 0, creator_id: 0 }],
                match_opposite: false,
            },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (r, code) in cases {
        let mut out = Frames::default();
        assert_eq!(s.handle(&payload(&r), &mut out), Flow::Continue);
        assert_eq!(error_code(&out.last()), code, "{r:?}");
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

/// Issue 9, item 6: a refused mutation with a megabyte of interface name or label cost
/// 5 MiB of log per request and an error reply too large to send.
#[test]
fn huge_untrusted_text_is_clipped_in_replies_and_logs() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let huge = "\u{7}".repeat(900_000);
    let requests = [
        Request::Flush { interface: Some(IfName(huge.clone())) },
        Request::KillMatching {
            selectors: vec![Selector { label: Some(Label(huge.clone())), ..Selector::default() }],
            match_opposite: false,
        },
        Request::KillMatching {
            selectors: vec![Selector { interface: Some(IfName(huge.clone())), ..nat_selector() }],
            match_opposite: false,
        },
        Request::Snapshot {
            selector: Some(Selector { interface: Some(IfName(huge.clone())), ..nat_selector() }),
        },
    ];
    for r in &requests {
        let (frames, logs) = captured_logs(|| {
            let mut s = greeted(&broker, ENGINE);
            let mut out = Frames::default();
            assert_eq!(s.handle(&payload(r), &mut out), Flow::Continue);
            out
        });
        let reply = frames.last();
        let Response::Error(e) = &reply else { panic!("{reply:?}") };
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message.len() <= statecull_proto::text::MAX_ERROR_MESSAGE,
            "reply message of {} bytes",
            e.message.len()
        );
        assert!(e.message.contains("more bytes"), "{}", e.message);
        assert!(logs.len() < 4096, "{} bytes of log for one refused request", logs.len());
        assert!(logs.contains("refused") || !r.verb().is_mutation(), "{logs}");
    }
    // Hello's client name is bounded and shown escaped.
    let (_, logs) = captured_logs(|| {
        let mut s = Session::new(&broker, ENGINE);
        let mut out = Frames::default();
        let r = Request::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "\u{1b}[31mred\n".repeat(5),
        });
        s.handle(&payload(&r), &mut out);
    });
    assert!(!logs.contains('\u{1b}'), "raw escape sequence in the log: {logs:?}");
    assert!(fake.calls().is_empty());
}

#[test]
fn mutations_are_refused_while_stopping_but_reads_still_answer() {
    let fake = FakeBackend::new(10);
    let broker = fake_broker(&fake, Config::default());
    let mut s = greeted(&broker, ENGINE);
    broker.stop();
    for r in [
        Request::KillMatching { selectors: vec![nat_selector()], match_opposite: false },
        Request::KillHandles {
            handles: vec![StateHandle::Pf { id: 1, creator_id: 1 }],
            match_opposite: false,
        },
        Request::Flush { interface: None },
    ] {
        let mut out = Frames::default();
        s.handle(&payload(&r), &mut out);
        assert_eq!(error_code(&out.last()), ErrorCode::ShuttingDown);
    }
    let mut out = Frames::default();
    s.handle(&payload(&Request::Count { selectors: vec![] }), &mut out);
    assert!(matches!(out.last(), Response::Count(_)));
    assert_eq!(fake.calls(), vec![Call::Count { selectors: 0 }]);
}

/// Issue 9, item 9: twelve parallel counts of one client multiplied the table walks (and
/// on pf the buffers): one uid now runs one count at a time, others wait their turn or are
/// told to retry; another uid (the engine) is never held up by them.
#[test]
fn one_count_per_uid_at_a_time_and_other_uids_are_not_held_up() {
    let fake = FakeBackend::new(10);
    let config = Config {
        timeouts: Timeouts { read_wait: Duration::from_millis(300), ..Timeouts::default() },
        ..Config::default()
    };
    let broker = fake_broker(&fake, config);
    fake.hold();
    let count = payload(&Request::Count { selectors: vec![nat_selector()] });
    std::thread::scope(|scope| {
        // Twelve counts of one uid, all at once.
        let flood: Vec<_> = (0..12)
            .map(|_| {
                let broker = &broker;
                let count = &count;
                scope.spawn(move || {
                    let mut s = greeted(broker, OTHER);
                    let mut out = Frames::default();
                    s.handle(count, &mut out);
                    out.last()
                })
            })
            .collect();
        assert!(fake.wait_running(1, Duration::from_secs(10)));
        // The engine's count runs beside the held one.
        let engine = scope.spawn(|| {
            let mut s = greeted(&broker, ENGINE);
            let mut out = Frames::default();
            s.handle(&count, &mut out);
            out.last()
        });
        assert!(fake.wait_running(2, Duration::from_secs(10)), "the engine's count waited");
        // The flood's others give up with Busy while the first is held.
        std::thread::sleep(Duration::from_millis(600));
        fake.release();
        let answers: Vec<Response> = flood.into_iter().map(|h| h.join().unwrap()).collect();
        let busy = answers
            .iter()
            .filter(|r| matches!(r, Response::Error(e) if e.code == ErrorCode::Busy))
            .count();
        let counted = answers.iter().filter(|r| matches!(r, Response::Count(_))).count();
        assert_eq!(busy + counted, 12, "{answers:?}");
        assert!(busy >= 1, "no count of the flood was turned away: {answers:?}");
        assert!(matches!(engine.join().unwrap(), Response::Count(_)));
    });
    assert_eq!(fake.max_running(), 2, "one per uid: the flood's first and the engine's");
}

// ---------------------------------------------------------------------------------------
// Protected prefixes through every verb and handle spelling (pf model)

/// An in-process broker over the pf model with `protected`.
fn model_broker(states: usize, protected: &[Prefix]) -> (Arc<PfBackend<ModelDevice>>, Broker) {
    let generated = router_table(&Spec::new(states, 7)).unwrap();
    let rows = generated.model.rows() as u64;
    let client = PfClient::probe(ModelDevice::new(generated.model, Release::FREEBSD_15)).unwrap();
    let backend = Arc::new(
        PfBackend::with_second_lane(client, BackendKind::PfModel, "pf model".into(), rows).unwrap(),
    );
    let config = Config { protected: protected.to_vec(), ..Config::default() };
    let broker = Broker::new(config, Box::new(Arc::clone(&backend)));
    (backend, broker)
}

/// (id, creator) of every state touching `prefix`, from the model itself.
fn protected_ids(backend: &PfBackend<ModelDevice>, prefix: &Prefix) -> Vec<(u64, u32)> {
    backend.with_device(|d| {
        d.model()
            .states()
            .filter(|s| {
                [s.wire.addr[0], s.wire.addr[1], s.stack.addr[0], s.stack.addr[1]]
                    .iter()
                    .any(|a| prefix.contains(a))
            })
            .map(|s| (s.id, s.creatorid))
            .collect()
    })
}

fn killed(r: &Response) -> (u64, u64) {
    match r {
        Response::Killed(k) => (k.killed, k.spared),
        other => panic!("expected a kill report, got {other:?}"),
    }
}

/// A LAN host of the generated table with some states.
fn busy_lan_host(backend: &PfBackend<ModelDevice>) -> Prefix {
    let host: IpAddr = backend.with_device(|d| {
        d.model()
            .states()
            .find(|s| matches!(s.stack.addr[0], IpAddr::V4(a) if a.octets()[..3] == [192, 0, 2]))
            .expect("a LAN state")
            .stack
            .addr[0]
    });
    Prefix { addr: host, len: 32 }
}

/// Issue 9, item 1: `KillHandles` with the ids of protected states but creator 0 killed
/// them (pf reads creator 0 as the host id; the broker compared (id, creator) as listed).
#[test]
fn protected_pf_states_survive_every_verb_and_handle_spelling() {
    for release in ["netlink", "nvlist"] {
        let (backend, _) = model_broker(20_000, &[]);
        let lan = busy_lan_host(&backend);
        let (backend, broker) = {
            // Rebuild with the protection in place (the same seed gives the same table).
            let generated = router_table(&Spec::new(20_000, 7)).unwrap();
            let rows = generated.model.rows() as u64;
            let rel = if release == "netlink" { Release::FREEBSD_15 } else { Release::FREEBSD_13 };
            let client = PfClient::probe(ModelDevice::new(generated.model, rel)).unwrap();
            let backend = Arc::new(
                PfBackend::with_second_lane(client, BackendKind::PfModel, "pf model".into(), rows)
                    .unwrap(),
            );
            let config = Config { protected: vec![lan], ..Config::default() };
            (Arc::clone(&backend), Broker::new(config, Box::new(backend)))
        };
        let shielded = protected_ids(&backend, &lan);
        assert!(shielded.len() >= 2, "{release}: too few protected states to test");
        let mut s = greeted(&broker, ENGINE);
        let mut ask = |r: Request| {
            let mut out = Frames::default();
            assert_eq!(s.handle(&payload(&r), &mut out), Flow::Continue);
            out.last()
        };
        let spellings: Vec<(&str, Vec<StateHandle>)> = vec![
            (
                "as listed",
                shielded
                    .iter()
                    .map(|(id, c)| StateHandle::Pf { id: *id, creator_id: *c })
                    .collect(),
            ),
            (
                "creator 0 (this host, as pf reads it)",
                shielded.iter().map(|(id, _)| StateHandle::Pf { id: *id, creator_id: 0 }).collect(),
            ),
        ];
        for (spelling, handles) in spellings {
            let (k, spared) = killed(&ask(Request::KillHandles {
                handles: handles.clone(),
                match_opposite: false,
            }));
            assert_eq!(k, 0, "{release}: handles {spelling} killed protected states");
            assert_eq!(spared, handles.len() as u64, "{release}: {spelling}");
        }
        // Selectors that cover them, with and without twins, and a flush.
        let covering = [
            Selector { src: Some(lan), ..Selector::default() },
            Selector { nat_addr: Some("198.51.100.1".parse().unwrap()), ..Selector::default() },
            Selector {
                family: Some(statecull_proto::AddressFamily::Ipv4),
                proto: Some(6),
                ..Selector::default()
            },
        ];
        for sel in &covering {
            for match_opposite in [false, true] {
                ask(Request::KillMatching { selectors: vec![sel.clone()], match_opposite });
            }
        }
        let _ = ask(Request::Count { selectors: vec![covering[0].clone()] });
        let (_, spared) = killed(&ask(Request::Flush { interface: None }));
        assert!(spared > 0, "{release}: the flush spared nothing");
        let left = protected_ids(&backend, &lan);
        assert_eq!(
            left.len(),
            shielded.len(),
            "{release}: protected states were killed (before {}, after {})",
            shielded.len(),
            left.len()
        );
    }
}

/// Issue 9, item 9: `KillHandles` with protections listed the whole table per request. Over
/// pf netlink the kernel filters the listing by each protected prefix: only protected
/// states are exported.
#[test]
fn pf_kill_by_handle_with_protections_exports_only_protected_states() {
    let (backend, _) = model_broker(50_000, &[]);
    let lan = busy_lan_host(&backend);
    let (backend, broker) = model_broker(50_000, &[lan]);
    let shielded = protected_ids(&backend, &lan).len() as u64;
    let victim = backend
        .with_device(|d| {
            d.model()
                .states()
                .find(|s| {
                    ![s.wire.addr[0], s.wire.addr[1], s.stack.addr[0], s.stack.addr[1]]
                        .iter()
                        .any(|a| lan.contains(a))
                })
                .map(|s| (s.id, s.creatorid))
        })
        .unwrap();
    let before = backend.with_device(|d| d.model().cost());
    let mut s = greeted(&broker, ENGINE);
    let mut out = Frames::default();
    s.handle(
        &payload(&Request::KillHandles {
            handles: vec![StateHandle::Pf { id: victim.0, creator_id: victim.1 }],
            match_opposite: false,
        }),
        &mut out,
    );
    assert_eq!(killed(&out.last()), (1, 0));
    let cost = backend.with_device(|d| d.model().cost()) - before;
    assert!(
        cost.states_exported <= shielded,
        "exported {} states to protect {shielded} (table of 50,000)",
        cost.states_exported
    );
}

// ---------------------------------------------------------------------------------------
// The server on a real socket, in-process

/// A server in its own thread; stopped (and joined) on drop.
struct LiveServer {
    socket: PathBuf,
    stop: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<String>>,
    _dir: TempDir,
}

impl LiveServer {
    fn start(mut config: Config, backend: Box<dyn Backend>) -> Self {
        let dir = TempDir::new("hostile").unwrap();
        let socket = dir.path().join("broker.sock");
        config.socket = socket.clone();
        if config.allowed_uids.is_empty() {
            config.allowed_uids.push(nix::unistd::geteuid().as_raw());
        }
        let server = Server::bind(config, backend).unwrap();
        let (stop_read, stop_write) = nix::unistd::pipe().unwrap();
        let thread = std::thread::spawn(move || {
            let ((), logs) = captured_logs(|| server.run(stop_read).unwrap());
            logs
        });
        Self { socket, stop: Some(stop_write), thread: Some(thread), _dir: dir }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Stop and return the server's log.
    fn finish(mut self) -> String {
        self.stop_now()
    }

    fn stop_now(&mut self) -> String {
        if let Some(w) = self.stop.take() {
            nix::unistd::write(&w, b"x").unwrap();
        }
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn send(s: &mut UnixStream, r: &Request) {
    s.write_all(&encode_request(r).unwrap()).unwrap();
}

fn recv(s: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body).ok()?;
    Some(decode_response(&body).unwrap())
}

fn say_hello(s: &mut UnixStream) {
    send(s, &hello());
    assert!(matches!(recv(s), Some(Response::Hello(_))));
}

/// True when the server closes `s` within `within` (EOF or reset), after reading any
/// answer it sent first.
fn closed_within(s: &mut UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        hello: Duration::from_millis(500),
        idle: Duration::from_millis(800),
        frame: Duration::from_millis(500),
        write: Duration::from_secs(5),
        snapshot_total: Duration::from_secs(30),
        read_wait: Duration::from_secs(2),
    }
}

#[test]
fn bad_lengths_truncated_frames_and_mid_frame_disconnects_leave_the_server_serving() {
    let fake = FakeBackend::new(10);
    let server = LiveServer::start(
        Config { timeouts: short_timeouts(), ..Config::default() },
        Box::new(fake.clone()),
    );
    // Length 0, and a length above the limit: an error answer, then the connection closes.
    for header in [0u32, statecull_proto::MAX_FRAME_LEN + 1, u32::MAX] {
        let mut s = server.connect();
        s.write_all(&header.to_be_bytes()).unwrap();
        let r = recv(&mut s).expect("an answer");
        assert_eq!(error_code(&r), ErrorCode::Malformed, "length {header}");
        assert!(closed_within(&mut s, Duration::from_secs(5)), "length {header}");
    }
    // A frame cut short and the peer gone.
    let mut s = server.connect();
    let frame = encode_request(&hello()).unwrap();
    s.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(s);
    // Half a header, then gone.
    let mut s = server.connect();
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    // Still serving.
    let mut s = server.connect();
    say_hello(&mut s);
    send(&mut s, &Request::Count { selectors: vec![] });
    assert!(matches!(recv(&mut s), Some(Response::Count(_))));
    drop(s);
    let logs = server.finish();
    assert!(fake.calls().iter().all(|c| matches!(c, Call::Count { .. })), "{:?}", fake.calls());
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn slowloris_and_silent_peers_are_cut_off() {
    let fake = FakeBackend::new(10);
    let server = LiveServer::start(
        Config { timeouts: short_timeouts(), ..Config::default() },
        Box::new(fake.clone()),
    );
    // Silent from the start: no Hello within the deadline.
    let mut silent = server.connect();
    // One byte every 200 ms: the frame deadline (500 ms) ends it.
    let mut slow = server.connect();
    let frame = encode_request(&hello()).unwrap();
    let trickle = std::thread::spawn(move || {
        for b in frame {
            if slow.write_all(&[b]).is_err() {
                return slow;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        slow
    });
    assert!(closed_within(&mut silent, Duration::from_secs(10)), "a silent peer kept its slot");
    let mut slow = trickle.join().unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(10)), "a slowloris peer kept its slot");
}

/// Issue 9, item 5: a connection that had said Hello could idle forever; sixteen of them
/// locked every new client out with `Busy`.
#[test]
fn idle_connections_after_hello_are_closed_and_slots_come_back() {
    let fake = FakeBackend::new(10);
    let me = nix::unistd::geteuid().as_raw();
    let config = Config {
        timeouts: short_timeouts(),
        max_connections: 2,
        max_connections_per_user: Some(1),
        engine_uid: Some(me),
        ..Config::default()
    };
    let server = LiveServer::start(config, Box::new(fake.clone()));
    // Fill the pool and the reserved slot, each connection idle after Hello.
    let mut idle: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut s = server.connect();
            say_hello(&mut s);
            s
        })
        .collect();
    let mut extra = server.connect();
    let r = recv(&mut extra).expect("a refusal");
    assert_eq!(error_code(&r), ErrorCode::Busy);
    // The idle ones are closed after the idle timeout, and a new client gets in.
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(10)), "an idle connection was kept");
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut fresh = server.connect();
    say_hello(&mut fresh);
}

/// Issue 9, item 2: a snapshot client that stopped reading held the pf backend's lock while
/// the broker wrote to it (600 s per write): every count and kill waited.
#[test]
fn a_stalled_snapshot_reader_does_not_hold_up_kills_or_counts() {
    let (backend, broker) = model_broker(200_000, &[]);
    drop(broker);
    let config = Config {
        // Longer than the engine waits below: a lock held across the stalled writes would
        // make the count and the kill time out.
        timeouts: Timeouts {
            write: Duration::from_secs(600),
            snapshot_total: Duration::from_secs(900),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let server = LiveServer::start(config, Box::new(Arc::clone(&backend)));
    // Ask for the whole table (tens of megabytes) and never read.
    let mut stalled = server.connect();
    say_hello(&mut stalled);
    send(&mut stalled, &Request::Snapshot { selector: None });
    // Let the listing finish and the writes block on the full socket buffer.
    std::thread::sleep(Duration::from_secs(2));
    let mut engine = server.connect();
    // Generous: a loaded CI machine runs this debug build slowly.
    engine.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    say_hello(&mut engine);
    send(&mut engine, &Request::Count { selectors: vec![nat_selector()] });
    assert!(
        matches!(recv(&mut engine), Some(Response::Count(_))),
        "a count waited behind a stalled snapshot reader"
    );
    send(
        &mut engine,
        &Request::KillMatching { selectors: vec![nat_selector()], match_opposite: true },
    );
    let r = recv(&mut engine).expect("the kill waited behind a stalled snapshot reader");
    let (k, _) = killed(&r);
    assert!(k > 0);
    drop(stalled);
}

/// A reader that takes a little now and then is cut off by the snapshot's total deadline.
#[test]
fn a_trickle_reader_is_cut_off_by_the_snapshot_deadline() {
    let fake = FakeBackend::new(300_000);
    let config = Config {
        timeouts: Timeouts {
            write: Duration::from_secs(30),
            snapshot_total: Duration::from_secs(2),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let server = LiveServer::start(config, Box::new(fake));
    let mut s = server.connect();
    say_hello(&mut s);
    send(&mut s, &Request::Snapshot { selector: None });
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the trickle reader was never cut off"
        );
    }
    // 300,000 records are far more than 4 KiB every 50 ms for 2 s.
    assert!(total < 20 << 20, "read {total} bytes: the whole snapshot went out");
}

#[test]
fn socket_paths_that_are_links_files_or_live_are_refused() {
    let dir = TempDir::new("hostile-paths").unwrap();
    let target = dir.path().join("root-only");
    std::fs::write(&target, b"secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for path in [&link, &target] {
        let config = Config { socket: path.clone(), ..Config::default() };
        let e = Server::bind(config, Box::new(FakeBackend::new(0))).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the link's target was changed");
    assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    // A live broker's socket is not stolen.
    let live = LiveServer::start(Config::default(), Box::new(FakeBackend::new(0)));
    let config = Config { socket: live.socket.clone(), ..Config::default() };
    let e = Server::bind(config, Box::new(FakeBackend::new(0))).unwrap_err().to_string();
    assert!(e.contains("in use"), "{e}");
    // A directory anyone can write without the sticky bit.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = Config { socket: open.join("b.sock"), ..Config::default() };
    let e = Server::bind(config, Box::new(FakeBackend::new(0))).unwrap_err().to_string();
    assert!(e.contains("writable by every user"), "{e}");
}

// ---------------------------------------------------------------------------------------
// A peer that is not allowed (issue 9, item 10)

/// Environment variable that turns this test binary into the refused peer's client.
const CHILD_ENV: &str = "STATECULL_HOSTILE_CHILD_SOCKET";

/// The refused peer: connects `n` times, prints the first answer's message and how many
/// connects got an answer at all.
fn refused_peer_client(socket: &Path, n: usize) {
    let mut first = None;
    let mut answered = 0usize;
    for _ in 0..n {
        let Ok(mut s) = UnixStream::connect(socket) else { continue };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Some(r) = recv(&mut s) {
            answered += 1;
            if first.is_none() {
                first = Some(r);
            }
        }
    }
    let message = match first {
        Some(Response::Error(e)) => format!("{}: {}", e.code.name(), e.message),
        other => format!("{other:?}"),
    };
    println!("CHILD-ANSWERED {answered}");
    println!("CHILD-FIRST {message}");
}

#[test]
fn refused_peer_child() {
    // Not a test by itself: the body of the refused peer when re-run as `nobody`.
    if let Ok(socket) = std::env::var(CHILD_ENV) {
        refused_peer_client(Path::new(&socket), 2000);
    }
}

#[test]
fn a_refused_peer_flood_is_logged_briefly_told_nothing_and_starves_no_one() {
    let fake = FakeBackend::new(10);
    let me = nix::unistd::geteuid().as_raw();
    // Allowed: someone else (root is always allowed; as root the flood comes from nobody).
    let config = Config { allowed_uids: vec![54_321], ..Config::default() };
    let server = LiveServer::start(config, Box::new(fake.clone()));
    let socket = server.socket.clone();
    let output = if me == 0 {
        // The socket is 0660 root-owned: let `nobody` reach it for this test.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "refused_peer_child", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        let socket = socket.clone();
        std::thread::spawn(move || {
            // Capture what the client prints by running it here and formatting the same way.
            let mut answered = 0;
            let mut first = String::new();
            for _ in 0..2000 {
                let Ok(mut s) = UnixStream::connect(&socket) else { continue };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                if let Some(r) = recv(&mut s) {
                    answered += 1;
                    if first.is_empty()
                        && let Response::Error(e) = r
                    {
                        first = format!("{}: {}", e.code.name(), e.message);
                    }
                }
            }
            format!("CHILD-ANSWERED {answered}\nCHILD-FIRST {first}\n")
        })
        .join()
        .unwrap()
    };
    // Meanwhile an allowed client (root, when we are root) was never starved: checked
    // after, since as non-root we are the refused peer ourselves.
    if me == 0 {
        let mut s = server.connect();
        say_hello(&mut s);
    }
    let logs = server.finish();
    // libtest may print "test refused_peer_child ... " before the child's first line.
    let after = |tag: &str| output.lines().find_map(|l| l.split(tag).nth(1).map(str::to_owned));
    let first = after("CHILD-FIRST ").unwrap_or_default();
    let answered: usize = after("CHILD-ANSWERED ").and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    assert!(first.starts_with("permission-denied"), "{output}");
    assert!(!first.contains("54321"), "the refusal disclosed the allow-list: {first}");
    assert!(answered > 1000, "refused peers got no answer: {output}");
    let lines = logs.lines().filter(|l| l.contains("peer not allowed")).count();
    assert!((1..=3).contains(&lines), "{lines} log lines for 2000 refused connects:\n{logs}");
    assert!(fake.calls().is_empty());
}

// ---------------------------------------------------------------------------------------
// Signals (issue 9, item 8): the broker binary, pf model, no root needed

/// A confined pf-model broker process (seccomp and all, as deployed), its socket and log.
fn model_broker_process(states: usize, extra: &[&str]) -> (ChildGuard, PathBuf, PathBuf, TempDir) {
    let dir = TempDir::new("hostile-proc").unwrap();
    let socket = dir.path().join("broker.sock");
    let log = dir.path().join("broker.log");
    let me = nix::unistd::geteuid().as_raw().to_string();
    let bin = Path::new(env!("CARGO_BIN_EXE_itest-broker"));
    let mut cmd = model_broker_command(bin, states, &socket, &log).unwrap();
    cmd.args(["--allow-user", &me]).args(extra);
    let child = ChildGuard::spawn_serving(&mut cmd, &socket, Duration::from_secs(120), &log)
        .unwrap_or_else(|e| panic!("the broker did not start: {e}"));
    (child, socket, log, dir)
}

/// Refused connections are answered from the accept loop without blocking it; in a
/// confined broker that answer must go through syscalls its seccomp list allows (a
/// non-blocking `fcntl`/`ioctl` would have killed it).
#[test]
fn a_confined_broker_turns_peers_away_and_keeps_serving() {
    let (mut child, socket, log, _dir) =
        model_broker_process(1000, &["--max-connections", "1", "--max-connections-per-user", "1"]);
    // The pool's slot and the reserved one (root's, or the engine's: the first allowed
    // user, which is us), then Busy. The start-up probe's connection may still hold the
    // pool's slot for a moment (the broker has not read its end yet, on a loaded
    // machine), so the two admissions are retried until then; after them, Busy.
    let attempt = || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        send(&mut s, &hello());
        match recv(&mut s) {
            Some(Response::Hello(_)) => Ok(s),
            Some(Response::Error(e)) if e.code == ErrorCode::Busy => Err(()),
            other => panic!("{other:?}\n{}", std::fs::read_to_string(&log).unwrap()),
        }
    };
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 2 {
        match attempt() {
            Ok(s) => held.push(s),
            Err(()) => {
                assert!(Instant::now() < deadline, "{} admitted, then only Busy", held.len());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let busy = (0..2).filter(|_| attempt().is_err()).count();
    assert_eq!((held.len(), busy), (2, 2));
    assert!(child.running(), "{}", std::fs::read_to_string(&log).unwrap());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    say_hello(&mut s);
    child.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait_exit(Duration::from_secs(120)).expect("no exit after SIGTERM");
    assert!(status.success(), "{status}");
}

/// SIGHUP, SIGUSR1, SIGUSR2, SIGALRM and real-time signals killed the broker with the
/// default action, also in the middle of a kill (86,254 entries deleted, no audit line).
#[test]
fn stray_signals_neither_stop_the_broker_nor_cut_a_kill_short() {
    let (mut child, socket, log, _dir) = model_broker_process(400_000, &[]);
    let pid = child.pid().to_string();
    // Names, or numbers for the real-time signals (procps' kill names no RTMIN+n).
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name}");
    };
    let stray = [
        "HUP", "USR1", "USR2", "ALRM", "VTALRM", "PROF", "IO", "PWR", "XCPU", "XFSZ", "34", "40",
        "64",
    ];
    // Idle.
    for s in stray {
        signal(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.running(), "a stray signal stopped the idle broker");
    // During a kill: signals keep arriving until the answer is in.
    let mut c = UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    say_hello(&mut c);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pelter = {
        let done = Arc::clone(&done);
        let pid = pid.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for s in ["HUP", "USR1", "USR2", "ALRM", "35"] {
                    let _ = std::process::Command::new("kill").args(["-s", s, &pid]).status();
                    sent += 1;
                }
            }
            sent
        })
    };
    // Every state with an IPv4 address: most of the table, one pass.
    send(
        &mut c,
        &Request::KillMatching {
            selectors: vec![
                Selector {
                    family: Some(statecull_proto::AddressFamily::Ipv4),
                    proto: Some(6),
                    ..Selector::default()
                },
                Selector {
                    family: Some(statecull_proto::AddressFamily::Ipv4),
                    proto: Some(17),
                    ..Selector::default()
                },
            ],
            match_opposite: true,
        },
    );
    let reply = recv(&mut c);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = pelter.join().unwrap();
    let (k, _) = killed(&reply.expect("the kill's answer never came"));
    assert!(k > 100_000, "killed {k}");
    assert!(sent > 0);
    assert!(child.running(), "a stray signal stopped the broker");
    // SIGQUIT stops it like SIGTERM: drained, exit 0.
    signal("QUIT");
    let status = child.wait_exit(Duration::from_secs(120)).expect("no exit after SIGQUIT");
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("states killed"), "no audit line:\n{text}");
    assert!(text.contains("signal ignored"), "{text}");
    assert!(text.contains("broker stopped"), "{text}");
    let ignored_lines = text.lines().filter(|l| l.contains("signal ignored")).count();
    assert!(ignored_lines <= 16, "{ignored_lines} lines for {sent} stray signals:\n{text}");
}

/// Issue 9, item 10: a pf-model broker started as root kept CAP_NET_ADMIN, which only a
/// kernel table needs.
#[test]
fn a_pf_model_broker_started_as_root_keeps_no_capability() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED a_pf_model_broker_started_as_root_keeps_no_capability: not root (nothing to drop)"
        );
        return;
    }
    let dir = TempDir::new("hostile-caps").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_itest-broker"))
        .args(["--backend", "pf-model", "--model-states", "1000", "--socket"])
        .arg(dir.path().join("b.sock"))
        .args(["--user", "nobody", "--print-sandbox"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for set in ["effective", "permitted", "bounding"] {
        assert!(text.contains(&format!("{set}: none")), "{set} is not empty:\n{text}");
    }
}

/// Issue 11: on pf a count's listing held the device lock, so a kill waited behind a count of
/// millions of states. Reads and kills now have their own lanes (two handles on the same
/// kernel): a kill issued while a count is listing finishes first.
#[test]
fn a_pf_count_in_progress_does_not_hold_up_a_kill() {
    let (backend, broker) = model_broker(400_000, &[]);
    let victim =
        backend.with_device(|d| d.model().states().next().map(|s| (s.id, s.creatorid))).unwrap();
    backend.with_device(|d| d.model().reset_cost());
    let order = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        let counting = {
            let order = Arc::clone(&order);
            let broker = &broker;
            scope.spawn(move || {
                let mut s = greeted(broker, OTHER);
                let mut out = Frames::default();
                s.handle(&payload(&Request::Count { selectors: vec![nat_selector()] }), &mut out);
                order.lock().unwrap().push("count");
                out.last()
            })
        };
        // Wait until the count's listing is under way (states are being exported).
        let started = Instant::now();
        while backend.with_device(|d| d.model().cost().states_exported) == 0 {
            assert!(started.elapsed() < Duration::from_secs(30), "the count never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut s = greeted(&broker, ENGINE);
        let mut out = Frames::default();
        s.handle(
            &payload(&Request::KillHandles {
                handles: vec![StateHandle::Pf { id: victim.0, creator_id: victim.1 }],
                match_opposite: false,
            }),
            &mut out,
        );
        order.lock().unwrap().push("kill");
        assert_eq!(killed(&out.last()), (1, 0));
        assert!(matches!(counting.join().unwrap(), Response::Count(_)));
    });
    assert_eq!(*order.lock().unwrap(), vec!["kill", "count"], "the kill waited for the count");
}
