//! The operator's details: what `statecull` says when it is given the wrong socket, pfctl's
//! spelling, half a selector. Each test checks the message an operator reads (and the exit
//! status), against a fake broker in a thread of the test where a peer is needed, so nothing
//! needs root.
// clippy.toml allows these inside #[test] functions only; the fakes and helpers assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::hello_reply;
use statecull_proto::frame::{decode_request, encode_response, payload_len};
use statecull_proto::{ErrorCode, ErrorReply, HEADER_LEN, Request, Response};

struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("statecull-papercuts-{what}-{}", std::process::id()));
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

/// Run `statecull ARGS` with no environment overrides; exit status, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statecull"))
        .args(args)
        .env_remove("STATECULL_CONTROL_SOCKET")
        .env_remove("STATECULL_BROKER_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the broker does with a peer: a frame whose length is out of bounds (a JSON line's
/// first four bytes, say) gets a `Malformed` error frame and the connection closed with the
/// rest unread (so the peer sees a reset); a Hello gets its answer.
fn serve_like_the_broker(mut conn: UnixStream) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if conn.read_exact(&mut header).is_err() {
            return;
        }
        let len = match payload_len(header) {
            Ok(len) => len,
            Err(e) => {
                let reply = Response::Error(ErrorReply {
                    code: ErrorCode::Malformed,
                    message: e.to_string(),
                });
                let _ = conn.write_all(&encode_response(&reply).unwrap());
                return;
            }
        };
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).is_err() {
            return;
        }
        let reply = match decode_request(&payload) {
            Ok(Request::Hello(_)) => Response::Hello(hello_reply()),
            _ => return,
        };
        if conn.write_all(&encode_response(&reply).unwrap()).is_err() {
            return;
        }
    }
}

fn listen(path: &Path, serve: fn(UnixStream)) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
}

#[test]
fn family_error_names_the_spellings_the_help_shows() {
    let (code, _, err) = run(&["broker", "list", "--family", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'--family <4|6>'"), "{err}");
    assert!(err.contains("expected 4 or 6 (also spelt ipv4 or inet, ipv6 or inet6)"), "{err}");
    let (code, help, _) = run(&["broker", "list", "--help"]);
    assert_eq!(code, Some(0));
    assert!(help.contains("Address family: 4 or 6 (also spelt ipv4 or inet, ipv6 or inet6)"));
    // Every spelling the help names is accepted (the socket is missing: past parsing).
    for spelling in ["4", "6", "ipv4", "inet", "ipv6", "inet6"] {
        let (code, _, err) = run(&[
            "broker",
            "-s",
            "/nonexistent/statecull.sock",
            "count",
            "--family",
            spelling,
            "--proto",
            "tcp",
        ]);
        assert_eq!(code, Some(1), "{spelling}: {err}");
        assert!(err.contains("cannot connect to the broker"), "{spelling}: {err}");
    }
}

#[test]
fn a_port_without_a_protocol_names_proto() {
    let (code, _, err) = run(&["broker", "list", "--dport", "5060"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err,
        "statecull: --dport needs --proto: ports belong to a protocol (--proto tcp, udp, sctp, \
         dccp or udplite)\n"
    );
    let (code, _, err) = run(&["broker", "kill", "--sport", "1-2", "--dport", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("statecull: --sport and --dport needs --proto"), "{err}");
    let (code, _, err) = run(&["broker", "count", "--proto", "icmp", "--dport", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--dport cannot match: --proto icmp has no ports"), "{err}");
}

#[test]
fn a_directory_given_as_a_socket_is_called_a_directory() {
    let dir = Scratch::new("dir");
    let d = dir.0.to_str().unwrap();
    let (code, _, err) = run(&["broker", "-s", d, "hello"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "statecull: cannot connect to the broker at {d}: it is a directory, not a socket; \
             give the socket's own path (default /run/statecull/broker.sock)\n"
        )
    );
    assert!(!err.contains("stale"), "{err}");
    let (code, _, err) = run(&["status", "-c", d]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("it is a directory, not a socket"), "{err}");
    assert!(err.contains("(default /run/statecull/engine.sock)"), "{err}");
    let file = dir.0.join("plain");
    std::fs::write(&file, "").unwrap();
    let (_, _, err) = run(&["status", "-c", file.to_str().unwrap()]);
    assert!(err.contains("it is a regular file, not a socket"), "{err}");
}

#[test]
fn status_on_the_brokers_socket_says_so() {
    let dir = Scratch::new("broker-socket");
    let sock = dir.0.join("broker.sock");
    listen(&sock, serve_like_the_broker);
    let s = sock.to_str().unwrap();
    let (code, _, err) = run(&["status", "-c", s]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "statecull: {s} is the broker's socket; `statecull status` talks to the engine's \
             control socket, default /run/statecull/engine.sock (--control, or \
             STATECULL_CONTROL_SOCKET)\n"
        )
    );
    assert!(!err.contains("writing output"), "{err}");
    let (_, _, err) = run(&["events", "-c", s]);
    assert!(err.contains("is the broker's socket; `statecull events` talks to"), "{err}");
}

#[test]
fn a_peer_that_is_neither_is_not_called_the_broker() {
    let dir = Scratch::new("other-socket");
    let sock = dir.0.join("other.sock");
    // Reads the request, answers something that is not JSON, closes.
    listen(&sock, |mut conn| {
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"220 hello\n");
    });
    let (code, _, err) = run(&["status", "-c", sock.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not answer as statecull-engine does"), "{err}");
    assert!(err.contains("talks to the engine's control socket"), "{err}");
    assert!(!err.contains("broker"), "{err}");
}

#[test]
fn without_an_engine_the_reason_is_given_once() {
    let (code, _, err) = run(&["status", "-c", "/nonexistent/statecull-engine.sock"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        "statecull: cannot connect to the engine at /nonexistent/statecull-engine.sock: no \
         socket there; is statecull-engine running, and is --control right?\n"
    );
    assert!(!err.contains("os error"), "{err}");
}

#[test]
fn pfctl_kill_spelling_gets_the_statecull_equivalent() {
    let (code, _, err) = run(&["broker", "-k", "gateway", "-k", "198.51.100.1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unexpected argument '-k'"), "{err}");
    assert!(
        err.contains(
            "tip: pfctl's `-k gateway -k 198.51.100.1` is `statecull broker kill --gateway \
             198.51.100.1`"
        ),
        "{err}"
    );
    let (code, _, err) = run(&["broker", "kill", "-k", "192.0.2.10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is `statecull broker kill --src 192.0.2.10`"), "{err}");
    // Other unknown flags get clap's own message, no pfctl tip.
    let (code, _, err) = run(&["broker", "kill", "-x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("pfctl"), "{err}");
}

#[test]
fn broker_commands_on_the_engines_socket_say_so() {
    let dir = Scratch::new("engine-socket");
    let sock = dir.0.join("engine.sock");
    // What the engine's control socket does with bytes that are not a JSON line: one error
    // line (the real engine answers when a line is complete, or after 30 s without one).
    listen(&sock, |mut conn| {
        let mut buf = [0u8; 256];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"{\"error\":{\"message\":\"cannot read the request\"}}\n");
    });
    let s = sock.to_str().unwrap();
    let (code, _, err) = run(&["broker", "-s", s, "hello"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "statecull: {s} answered in JSON lines: it is the engine's control socket; \
             `statecull broker` talks to the broker's socket, default \
             /run/statecull/broker.sock (--socket, or STATECULL_BROKER_SOCKET)\n"
        )
    );
}

/// An engine that answers the Events request with an empty backlog, then stays silent.
fn serve_like_a_quiet_engine(conn: UnixStream) {
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if std::io::BufRead::read_line(&mut reader, &mut line).is_ok() {
        let mut w = conn;
        let _ = w.write_all(b"{\"events\":{\"events\":[]}}\n");
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// An event follower polls with a read timeout (the lab's routing manager does): a quiet
/// engine is a timeout the caller sees as such, not "did not answer as statecull-engine does".
#[test]
fn a_quiet_event_stream_is_a_timeout_not_a_foreign_peer() {
    let dir = Scratch::new("quiet");
    let path = dir.0.join("engine.sock");
    listen(&path, serve_like_a_quiet_engine);
    let mut c = statecull_cli::engine_cmds::ControlClient::connect(
        &path,
        Some(std::time::Duration::from_millis(200)),
    )
    .unwrap();
    c.send(&statecull_control::ControlRequest::Events { follow: true }).unwrap();
    let reply = c.reply();
    assert!(
        matches!(reply, Ok(statecull_control::ControlReply::Events { .. })),
        "{:?}",
        reply.err().map(|e| e.to_string())
    );
    match c.read_line() {
        Err(statecull_cli::CliError::Output(e)) => assert!(
            matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "{e}"
        ),
        other => panic!("expected a read timeout, got {:?}", other.map_err(|e| e.to_string())),
    }
}
