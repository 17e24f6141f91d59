//! `statecull ... | head`: every command, with its standard output a pipe whose reader has
//! gone, stops quietly with exit status 0 (no panic, no "Broken pipe" message), as ripgrep
//! and most tools do. The commands run against a fake engine (JSON lines) and a fake broker
//! (bincode frames) in threads of this test, so nothing needs root.
// clippy.toml allows these inside #[test] functions only; the fakes and helpers assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hello_reply;
use statecull_control::{
    BrokerStatus, ControlReply, ControlRequest, Event, EventKind, GatewayStatus, PlanReply,
    PlanStepSummary, StatusReply,
};
use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{
    CountReply, HEADER_LEN, KillPath, KillReport, L4, Request, Response, SnapshotDone, StateDetail,
    StateHandle, StateKey, StateRecord,
};

fn statecull() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statecull"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy/examples")
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("statecull-closed-stdout-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run with stdout a pipe whose read end is already closed, so the first write fails with
/// EPIPE (Rust programs ignore SIGPIPE). Gives up after 20 s (a follower that never notices
/// must fail the test, not hang it).
fn run_closed(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = cmd.stdout(writer).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after 20 s with its output closed; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// What is wrong with a run that should have stopped quietly, if anything.
fn not_quiet(what: &str, out: &Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if stderr.contains("panicked") {
        return Some(format!("{what}: panicked ({:?}): {stderr}", out.status));
    }
    if out.status.code() != Some(0) || !stderr.trim().is_empty() {
        return Some(format!("{what}: {:?}, stderr: {first}", out.status));
    }
    None
}

/// Fails listing every case that was not quiet (all cases run first).
#[track_caller]
fn assert_all_quiet(failures: &[String]) {
    assert!(failures.is_empty(), "{} case(s) not quiet:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// A fake engine: answers every request of a connection; `Events { follow: true }` streams
// events until the client goes away.

fn event(seq: u64) -> Event {
    Event {
        seq,
        unix_ms: 1_700_000_000_000 + seq,
        kind: EventKind::GatewayDown,
        gateway: Some("WAN1".into()),
        message: format!("WAN1 up -> down (event {seq})"),
        killed: None,
        elapsed_ms: Some(1.0),
        fields: vec![],
    }
}

fn status_reply() -> StatusReply {
    StatusReply {
        engine_version: "0.0.0".into(),
        policy: "/etc/statecull/policy.toml".into(),
        uptime_s: 12.0,
        broker: BrokerStatus {
            socket: "/run/statecull/broker.sock".into(),
            connected: true,
            backend: Some("conntrack".into()),
            pending_plans: 0,
            last_error: None,
        },
        gateways: (0..200)
            .map(|i| GatewayStatus {
                name: format!("WAN{i}"),
                interface: format!("eth{i}"),
                address: "198.51.100.254".into(),
                health_source: "icmp".into(),
                state: "up".into(),
                suppressed: false,
                forced: false,
                since_ms: 1000,
                last_reason: None,
                loss_pct: 0.0,
                latency_ms: Some(1.5),
                samples: 20,
                flap_penalty: 0.0,
                states: Some(100),
                states_age_ms: Some(1000),
            })
            .collect(),
        recent_events: (1..=10).map(event).collect(),
        states_refresh: None,
    }
}

fn plan_reply() -> PlanReply {
    PlanReply {
        explanation: "WAN1 down: kill WAN1's states\n".repeat(100),
        steps: vec![PlanStepSummary {
            purpose: "gateway-down".into(),
            action: "kill-matching".into(),
            why: "WAN1 down".into(),
            selectors: vec![("--mark 0x1/0xff".into(), Some(10))],
            match_opposite: false,
            would_kill: Some(10),
            spared_flows: vec![],
        }],
        skipped: vec![],
        counted: true,
    }
}

fn serve_engine(conn: UnixStream) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let reply = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest::Status) => ControlReply::Status(status_reply()),
            Ok(ControlRequest::Plan { .. }) => ControlReply::Plan(plan_reply()),
            Ok(ControlRequest::Gateway { name, .. }) => {
                ControlReply::Done { message: format!("{name} forced down") }
            }
            Ok(ControlRequest::Reload) => ControlReply::Done { message: "reloaded".into() },
            Ok(ControlRequest::Events { follow }) => {
                let backlog = ControlReply::Events { events: (1..=5).map(event).collect() };
                let mut text = serde_json::to_string(&backlog).unwrap();
                text.push('\n');
                if writer.write_all(text.as_bytes()).is_err() || !follow {
                    return;
                }
                // New events until the follower hangs up.
                for seq in 6.. {
                    let mut text = serde_json::to_string(&event(seq)).unwrap();
                    text.push('\n');
                    if writer.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Err(e) => ControlReply::Error { message: e.to_string() },
        };
        let mut text = serde_json::to_string(&reply).unwrap();
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

// ---------------------------------------------------------------------------------------
// A fake broker: Hello, Count, Snapshot (many batches), KillMatching, Flush.

fn record(i: u32) -> StateRecord {
    let key = StateKey {
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        l4: L4::Ports { src: u16::try_from(i % 60_000).unwrap() + 1024, dst: 443 },
    };
    let reply = StateKey {
        proto: 6,
        src: key.dst,
        dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        l4: L4::Ports { src: 443, dst: u16::try_from(i % 60_000).unwrap() + 1024 },
    };
    StateRecord {
        handle: StateHandle::Conntrack { orig: key, id: i, zone: 0 },
        key,
        detail: StateDetail::Conntrack { reply, mark: 1, zone: 0, status: 0xe, tcp_state: Some(3) },
        expires_in_secs: Some(431_000),
        counters: None,
    }
}

fn kill_report() -> KillReport {
    KillReport {
        requested: 0,
        killed: 5,
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: true,
        path: KillPath::DumpAndDelete,
        table_passes: 1,
        elapsed_us: 100,
        note: None,
        per_selector: Vec::new(),
    }
}

fn send(conn: &mut UnixStream, r: &Response) -> bool {
    conn.write_all(&encode_response(r).unwrap()).is_ok()
}

fn serve_broker(mut conn: UnixStream) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if conn.read_exact(&mut header).is_err() {
            return;
        }
        let mut payload = vec![0u8; payload_len(header).unwrap()];
        if conn.read_exact(&mut payload).is_err() {
            return;
        }
        let ok = match decode_request(&payload).unwrap() {
            Request::Hello(_) => send(&mut conn, &Response::Hello(hello_reply())),
            Request::Count { selectors } => send(
                &mut conn,
                &Response::Count(CountReply {
                    per_selector: vec![7; selectors.len()],
                    matching_any: 7,
                    table_entries: 100,
                    elapsed_us: 10,
                }),
            ),
            Request::Snapshot { .. } => {
                // 100 batches of 1,000: far more than a pipe holds.
                let mut ok = true;
                for b in 0..100 {
                    let batch = (0..1000).map(|i| record(b * 1000 + i)).collect();
                    ok = send(&mut conn, &Response::SnapshotBatch(batch));
                    if !ok {
                        break;
                    }
                }
                ok && send(
                    &mut conn,
                    &Response::SnapshotDone(SnapshotDone { records: 100_000, elapsed_us: 1 }),
                )
            }
            Request::KillMatching { .. } | Request::Flush { .. } => {
                send(&mut conn, &Response::Killed(kill_report()))
            }
            _ => false,
        };
        if !ok {
            return;
        }
    }
}

/// Listen on `path`, serving every connection on its own thread, for the test's lifetime.
fn listen(path: &Path, serve: fn(UnixStream)) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
}

// ---------------------------------------------------------------------------------------

#[test]
fn help_and_version_stop_quietly() {
    let mut failures = Vec::new();
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["--version"],
        vec!["help"],
        vec!["broker", "--help"],
        vec!["broker", "list", "--help"],
        vec!["events", "--help"],
        vec!["check-policy", "--help"],
    ] {
        let out = run_closed(statecull().args(&args));
        failures.extend(not_quiet(&format!("statecull {}", args.join(" ")), &out));
    }
    assert_all_quiet(&failures);
}

#[test]
fn check_policy_stops_quietly() {
    let mut failures = Vec::new();
    let file = examples().join("linux-mwan-three-wan.toml");
    for json in [false, true] {
        let mut cmd = statecull();
        cmd.arg("check-policy").arg(&file);
        if json {
            cmd.arg("--json");
        }
        failures.extend(not_quiet(&format!("check-policy (json {json})"), &run_closed(&mut cmd)));
    }
    assert_all_quiet(&failures);
}

#[test]
fn engine_commands_stop_quietly() {
    let mut failures = Vec::new();
    let dir = Scratch::new("engine");
    let sock = dir.0.join("engine.sock");
    listen(&sock, serve_engine);
    let cases: [&[&str]; 8] = [
        &["status"],
        &["status", "--json"],
        &["plan", "--down", "WAN1"],
        &["plan", "--down", "WAN1", "--json"],
        &["gateway", "WAN1", "down", "--routed"],
        &["events"],
        &["events", "--follow"],
        &["events", "--follow", "--json"],
    ];
    for args in cases {
        let out = run_closed(statecull().args(args).arg("--control").arg(&sock));
        failures.extend(not_quiet(&format!("statecull {}", args.join(" ")), &out));
    }
    assert_all_quiet(&failures);
}

#[test]
fn broker_commands_stop_quietly() {
    let mut failures = Vec::new();
    let dir = Scratch::new("broker");
    let sock = dir.0.join("broker.sock");
    listen(&sock, serve_broker);
    let cases: [&[&str]; 8] = [
        &["hello"],
        &["hello", "--json"],
        &["count"],
        &["count", "--mark", "1/0xff", "--json"],
        &["list"],
        &["list", "--json"],
        &["kill", "--mark", "1/0xff"],
        &["flush", "--json"],
    ];
    for args in cases {
        let out = run_closed(statecull().arg("broker").arg("--socket").arg(&sock).args(args));
        failures.extend(not_quiet(&format!("statecull broker {}", args.join(" ")), &out));
    }
    assert_all_quiet(&failures);
}

/// Errors still fail, and a closed standard error does not turn them into a panic.
#[test]
fn errors_with_closed_output_fail_without_panicking() {
    let dir = Scratch::new("errors");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[[gateway]]\nname = 1\n").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let err_writer = writer.try_clone().unwrap();
    let out = statecull()
        .arg("check-policy")
        .arg(&bad)
        .stdout(writer)
        .stderr(err_writer)
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1), "an invalid policy fails with 1 (101 is a panic)");
    // And with stderr readable, the message is there.
    let out = run_closed(statecull().arg("check-policy").arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:2"), "{out:?}");
}

/// With --exec the commands are the follower's job (routing hooks): they keep running when
/// nobody reads the printed events.
#[test]
fn events_follow_exec_keeps_running_hooks_with_output_closed() {
    let dir = Scratch::new("exec");
    let sock = dir.0.join("engine.sock");
    listen(&sock, serve_engine);
    let log = dir.0.join("hooks.log");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = statecull()
        .args(["events", "--follow", "--exec"])
        .arg(format!("echo \"$STATECULL_SEQ\" >> '{}'", log.display()))
        .arg("--control")
        .arg(&sock)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ran = || std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
    while ran() < 5 && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "the follower stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(ran() >= 5, "hooks ran {} times; stderr: {stderr}", ran());
    assert!(!stderr.contains("panicked"), "{stderr}");
}
