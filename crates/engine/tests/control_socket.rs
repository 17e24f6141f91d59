//! The control socket: created without following links (bound in a private directory,
//! renamed into place), and bounded: a connection cap with a refusal line, an idle timeout,
//! and a separate, smaller cap for `events --follow` subscribers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use statecull_testkit::TempDir;

use statecull_engine::broker::BrokerLink;
use statecull_engine::control::{ControlLimits, bind, serve_with};
use statecull_engine::state::Shared;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const POLICY: &str = r#"
[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
nat_addr = ["198.51.100.1"]
"#;

fn shared(dir: &TempDir) -> Arc<Shared> {
    let policy = statecull_policy::load::parse(POLICY, "test policy").unwrap();
    // No broker there: status answers with unknown counts at once.
    let (s, _d, _m) = Shared::new(policy, BrokerLink::new(dir.path().join("no-broker.sock")));
    Arc::new(s)
}

/// Issue 7: the old `bind` (umask + bind by path) created the socket in a directory every
/// user may write, where anyone could swap it for their own.
#[tokio::test]
async fn bind_refuses_a_directory_others_can_write() {
    let dir = TempDir::with_mode("ctl", 0o777).unwrap();
    let e = bind(&dir.path().join("engine.sock")).unwrap_err().to_string();
    assert!(e.contains("writable by every user"), "{e}");
    assert!(!dir.path().join("engine.sock").exists());
}

#[tokio::test]
async fn bind_creates_0660_in_place_and_refuses_a_live_engine() {
    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = dir.path().join("engine.sock");
    let listener = bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no staging directory left behind: {names:?}");

    let e = bind(&path).unwrap_err().to_string();
    assert!(e.contains("is another statecull-engine running?"), "{e}");
    drop(listener);
    // Stale now: replaced.
    let _again = bind(&path).unwrap();

    // Anything that is not a socket is left alone, links included.
    let target = dir.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = bind(&link).unwrap_err().to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

async fn read_line(s: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    line
}

async fn connect(path: &std::path::Path) -> BufReader<UnixStream> {
    BufReader::new(UnixStream::connect(path).await.unwrap())
}

/// Issue 4: past the cap a connection is refused with a line and closed; idle connections
/// are closed after the idle timeout; followers have their own cap; the socket keeps
/// answering throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_closed() {
    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = dir.path().join("engine.sock");
    let listener = bind(&path).unwrap();
    let limits = ControlLimits {
        max_connections: 4,
        max_followers: 1,
        idle_timeout: Duration::from_millis(800),
    };
    let server = tokio::spawn(serve_with(listener, shared(&dir), limits));

    // One follower: it gives its connection slot back and has its own.
    let mut follower = connect(&path).await;
    follower.get_mut().write_all(b"{\"events\":{\"follow\":true}}\n").await.unwrap();
    assert!(read_line(&mut follower).await.starts_with("{\"events\""));
    let mut second = connect(&path).await;
    second.get_mut().write_all(b"{\"events\":{\"follow\":true}}\n").await.unwrap();
    let refused = read_line(&mut second).await;
    assert!(refused.contains("too many `events --follow` subscribers"), "{refused}");

    // Four idle connections take every slot; the next ones are refused at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&path).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let mut extra = connect(&path).await;
        let line = read_line(&mut extra).await;
        assert!(line.contains("too many control connections (limit 4)"), "{line}");
        let mut rest = Vec::new();
        extra.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the refusal");
    }

    // The idle ones are told and closed after the timeout; the follower stays.
    for c in &mut idle {
        let line = read_line(c).await;
        assert!(line.contains("no complete request line within 800 ms"), "{line}");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
    }
    drop(idle);
    let mut status = connect(&path).await;
    status.get_mut().write_all(b"\"status\"\n").await.unwrap();
    let line = read_line(&mut status).await;
    assert!(line.starts_with("{\"status\""), "{line}");
    // A connection that keeps talking is not idle: each request restarts the clock.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        status.get_mut().write_all(b"{\"events\":{}}\n").await.unwrap();
        assert!(read_line(&mut status).await.starts_with("{\"events\""));
    }
    // The follower is still subscribed, and hanging up frees its slot for the next one.
    drop(follower);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = connect(&path).await;
    next.get_mut().write_all(b"{\"events\":{\"follow\":true}}\n").await.unwrap();
    assert!(read_line(&mut next).await.starts_with("{\"events\""));
    server.abort();
}

/// Issue 9, item 6 on the engine's side: a request line of tens of kilobytes (an unknown
/// variant, an unknown gateway name) is not echoed back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_are_clipped_in_error_replies() {
    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = dir.path().join("engine.sock");
    let listener = bind(&path).unwrap();
    let limits = ControlLimits {
        max_connections: 4,
        max_followers: 1,
        idle_timeout: Duration::from_secs(10),
    };
    let server = tokio::spawn(serve_with(listener, shared(&dir), limits));
    let huge = "W".repeat(60_000);
    for line in [
        format!("{{\"gateway\":{{\"name\":\"{huge}\",\"action\":\"down\"}}}}\n"),
        format!("\"{huge}\"\n"),
    ] {
        let mut c = connect(&path).await;
        c.get_mut().write_all(line.as_bytes()).await.unwrap();
        let reply = read_line(&mut c).await;
        assert!(reply.contains("\"error\""), "{}", &reply[..reply.len().min(200)]);
        assert!(reply.len() < 4096, "an error reply of {} bytes", reply.len());
    }
    server.abort();
}
