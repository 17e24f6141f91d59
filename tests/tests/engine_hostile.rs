//! The confined engine against hostile local peers, no root needed (as root the engine
//! switches to `nobody`): signals any process of its uid may send must not stop it, and
//! idle control connections must neither exhaust its descriptors nor stop it reading
//! gateway health.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use statecull_tests::daemons::{EXTERNAL_POLICY, engine_command, model_broker_command};
use statecull_tests::{ChildGuard, TempDir};

/// Send `sig` (a number: real-time signals have no `Signal` variant) with kill(1).
fn send_signal(p: &mut ChildGuard, sig: i32) {
    assert!(p.running(), "the process has exited; signal {sig} not sent");
    let status =
        Command::new("kill").arg(format!("-{sig}")).arg(p.pid().to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} failed");
}

/// Spawn the daemon `cmd` and wait for its socket; fails with its log.
fn serving(cmd: &mut Command, socket: &Path, log: &Path) -> ChildGuard {
    ChildGuard::spawn_serving(cmd, socket, Duration::from_secs(60), log)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn start_broker(dir: &Path) -> (ChildGuard, PathBuf) {
    let socket = dir.join("broker.sock");
    let log = dir.join("broker.log");
    let bin = Path::new(env!("CARGO_BIN_EXE_itest-broker"));
    let p = serving(&mut model_broker_command(bin, 2000, &socket, &log).unwrap(), &socket, &log);
    (p, socket)
}

/// Start the confined engine with `policy`, optionally under a descriptor limit (soft and
/// hard, so it cannot raise it).
fn start_engine(
    dir: &Path,
    policy: &str,
    nofile: Option<u32>,
    extra: &[&str],
) -> (ChildGuard, PathBuf) {
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let control = dir.join("engine.sock");
    let log = dir.join("engine.log");
    let runner = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""));
            c.arg(env!("CARGO_BIN_EXE_itest-engine"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_itest-engine")),
    };
    let broker = dir.join("broker.sock");
    let mut cmd = engine_command(runner, &policy_path, &broker, &control, &log).unwrap();
    cmd.args(["--log-format", "json"]).args(extra);
    (serving(&mut cmd, &control, &log), control)
}

/// One request on a fresh connection; the answer's first line.
fn ask(control: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

fn status_ok(control: &Path) -> bool {
    ask(control, "\"status\"").starts_with("{\"status\"")
}

/// Issue 8: SIGHUP, SIGUSR1/2, SIGALRM, ... and the real-time signals used to stop the
/// engine with their default action. Each must be survived (the engine still answers), and
/// SIGTERM must still stop it with exit status 0.
#[test]
fn terminating_signals_are_survived_and_sigterm_still_stops_cleanly() {
    let dir = TempDir::new("engine-signals").unwrap();
    let (_broker, _) = start_broker(dir.path());
    let (mut engine, control) = start_engine(dir.path(), EXTERNAL_POLICY, None, &[]);
    assert!(status_ok(&control));
    let signals = statecull_engine::signals::ignored();
    assert!(signals.len() > 20, "real-time signals included: {signals:?}");
    for (n, name) in &signals {
        send_signal(&mut engine, *n);
        // Twice: the second one inside the log rate limit.
        send_signal(&mut engine, *n);
        std::thread::sleep(Duration::from_millis(30));
        assert!(engine.running(), "{name} stopped the engine");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(engine.running(), "a signal stopped the engine");
    assert!(status_ok(&control), "the engine no longer answers");
    let log = std::fs::read_to_string(dir.path().join("engine.log")).unwrap();
    let usr1 = log.lines().filter(|l| l.contains("SIGUSR1 ignored")).count();
    assert_eq!(usr1, 1, "one line per signal per minute: {log}");
    // SIGHUP reloads the policy (tests/tests/engine_reload.rs); a reload of the same file
    // does not stop the engine either.
    send_signal(&mut engine, nix::libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    assert!(engine.running(), "SIGHUP stopped the engine");

    engine.signal(Signal::SIGTERM).unwrap();
    let status = engine.wait_exit(Duration::from_secs(10)).expect("SIGTERM stops the engine");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// SIGQUIT and SIGINT stop the engine as SIGTERM does.
#[test]
fn sigquit_and_sigint_stop_it_like_sigterm() {
    for sig in [Signal::SIGQUIT, Signal::SIGINT] {
        let dir = TempDir::new("engine-quit").unwrap();
        let (mut engine, control) = start_engine(dir.path(), EXTERNAL_POLICY, None, &[]);
        assert!(status_ok(&control));
        engine.signal(sig).unwrap();
        let status = engine.wait_exit(Duration::from_secs(10)).expect("the engine stops");
        assert_eq!(status.code(), Some(0), "{sig}: {status}");
    }
}

/// A stand-in dpinger: answers every connection with `line` and closes it; counts them.
fn dpinger(dir: &Path, line: &'static str) -> (PathBuf, Arc<AtomicU64>) {
    let path = dir.join("dpinger_WAN1.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // The engine may run as `nobody`.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&polls);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            p.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(line.as_bytes());
        }
    });
    (path, polls)
}

fn dpinger_policy(socket: &Path) -> String {
    format!(
        r#"
[routing]
confirm = "delay"
settle_timeout = "1s"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "dpinger"
dpinger_socket = "{}"
probe_interval = "100ms"
probe_timeout = "1s"
[gateway.states]
nat_addr = ["198.51.100.1"]

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
        socket.display()
    )
}

fn wait_polls(polls: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while polls.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "dpinger is not being polled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 4: with 96 descriptors, 150 idle control connections used to take every one of
/// them; dpinger polls then failed with EMFILE and a gateway failure went unseen. Now the
/// excess is refused with a line, the idle ones are closed after the (here 2 s) idle
/// timeout, and polling never stops.
#[test]
fn idle_control_connections_cannot_starve_health_polling() {
    let dir = TempDir::new("engine-fds").unwrap();
    let (socket, polls) = dpinger(dir.path(), "WAN1 1000 100 0\n");
    let (mut engine, control) = start_engine(
        dir.path(),
        &dpinger_policy(&socket),
        Some(96),
        &["--control-idle-timeout-ms", "2000"],
    );
    wait_polls(&polls, 3);

    let opened = Instant::now();
    let mut conns: Vec<UnixStream> =
        (0..150).map(|_| UnixStream::connect(&control).unwrap()).collect();
    // Polling goes on while they are all open.
    let before = polls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1000));
    let during = polls.load(Ordering::SeqCst) - before;
    assert!(during >= 3, "only {during} dpinger polls in 1 s with the connections open");
    assert!(engine.running());

    // The excess was refused at once with a reason; the rest were held until the idle
    // timeout, then told and closed.
    let (mut refused, mut idle_closed) = (0, 0);
    for mut c in conns.drain(..) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        if all.contains("too many control connections") {
            refused += 1;
        } else {
            assert!(all.contains("no complete request line within 2000 ms"), "{all:?}");
            idle_closed += 1;
        }
    }
    assert!(refused >= 150 - 64, "only {refused} of 150 connections refused");
    assert!(idle_closed <= 64, "{idle_closed} held");
    assert!(opened.elapsed() >= Duration::from_secs(2), "closed before the idle timeout");
    let before = polls.load(Ordering::SeqCst);
    assert!(status_ok(&control));
    wait_polls(&polls, before + 3);
    let log = std::fs::read_to_string(dir.path().join("engine.log")).unwrap();
    assert!(!log.contains("OUT OF FILE DESCRIPTORS"), "{log}");
    assert!(engine.running());
}

/// When descriptors run out anyway (a limit below what the caps allow), a dpinger poll that
/// cannot get one is reported loudly as the engine's own failure, never taken for the
/// gateway's health.
#[test]
fn running_out_of_descriptors_is_reported_loudly() {
    let dir = TempDir::new("engine-emfile").unwrap();
    let (socket, polls) = dpinger(dir.path(), "WAN1 1000 100 0\n");
    let (engine, control) = start_engine(
        dir.path(),
        &dpinger_policy(&socket),
        Some(40),
        &["--control-idle-timeout-ms", "3000"],
    );
    wait_polls(&polls, 3);
    let conns: Vec<UnixStream> = (0..64).map(|_| UnixStream::connect(&control).unwrap()).collect();
    let log_path = dir.path().join("engine.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("OUT OF FILE DESCRIPTORS") && log.contains("health NOT updated") {
            assert!(
                log.lines().any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("dpinger")),
                "{log}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no loud report of the exhaustion: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(conns);
    drop(engine);
}

/// Issue 12: every connection the confined engine makes goes through the dialer it built
/// before confinement. A dpinger that restarts (its socket removed and bound anew at the
/// same path) is read again by the confined engine, and the `--check` listing names exactly
/// the broker's and the policy's dpinger sockets. (On FreeBSD the same dialer reconnects with
/// `connectat` in a directory opened before `cap_enter`; that part is type-checked only.)
#[test]
fn the_confined_engine_reads_a_restarted_dpinger_again() {
    let dir = TempDir::new("engine-redial").unwrap();
    let (socket, first) = dpinger(dir.path(), "WAN1 1000 100 0\n");
    let (engine, _control) = start_engine(dir.path(), &dpinger_policy(&socket), None, &[]);
    wait_polls(&first, 3);
    // dpinger restarts: the old socket goes away (its listener lingers, unreachable) and a
    // new one is bound at the same path.
    std::fs::remove_file(&socket).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (again, second) = dpinger(dir.path(), "WAN1 1000 100 0\n");
    assert_eq!(again, socket);
    wait_polls(&second, 3);
    drop(engine);

    let out = Command::new(env!("CARGO_BIN_EXE_itest-engine"))
        .arg("--policy")
        .arg(dir.path().join("policy.toml"))
        .arg("--broker-socket")
        .arg(dir.path().join("broker.sock"))
        .arg("--control-socket")
        .arg(dir.path().join("check.sock"))
        .arg("--check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("sockets reachable after confinement"))
        .skip(1)
        .collect();
    assert_eq!(
        listed,
        [
            format!("  {} (the broker)", dir.path().join("broker.sock").display()),
            format!("  {} (dpinger of WAN1)", socket.display()),
        ],
        "{text}"
    );
}
