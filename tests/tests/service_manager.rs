//! Both daemons and their service manager, as processes (no root needed; as root they
//! switch to `nobody`): `READY=1` on a fake `NOTIFY_SOCKET` (a datagram socket the test
//! binds, by path and abstract name) once they serve, confined, and `STOPPING=1` on SIGTERM;
//! log lines with the sd-daemon `<N>` priority prefix when `JOURNAL_STREAM` names their
//! standard error, and without it otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use statecull_tests::daemons::{self, EXTERNAL_POLICY};
use statecull_tests::{ChildGuard, TempDir};

/// Spawn the daemon `cmd` and wait for its socket; fails with its log.
fn serving(cmd: &mut Command, socket: &Path, log: &Path) -> ChildGuard {
    ChildGuard::spawn_serving(cmd, socket, Duration::from_secs(60), log)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The fake service manager's socket.
struct FakeManager {
    socket: UnixDatagram,
    /// `NOTIFY_SOCKET`'s value for it.
    address: String,
}

impl FakeManager {
    fn by_path(dir: &Path) -> Self {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // As root the daemon connects before switching user; otherwise it is our user.
        Self { socket, address: path.display().to_string() }
    }

    fn abstract_name(tag: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("statecull-test-notify-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Self { socket: UnixDatagram::bind_addr(&addr).unwrap(), address: format!("@{name}") }
    }

    /// The next notification, within `within`.
    fn next(&self, within: Duration, log: &Path) -> String {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
            Err(e) => panic!(
                "no notification within {within:?} ({e}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

/// A pf-model broker with neither `NOTIFY_SOCKET` nor `JOURNAL_STREAM` from the test's
/// environment.
fn broker_command(socket: &Path, log: &Path) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_itest-broker"));
    let mut c = daemons::model_broker_command(bin, 200, socket, log).unwrap();
    c.env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    c
}

/// The engine with [`EXTERNAL_POLICY`] in `dir`, neither `NOTIFY_SOCKET` nor
/// `JOURNAL_STREAM` from the test's environment; its control socket.
fn engine_command(dir: &Path, broker: &Path, log: &Path) -> (Command, PathBuf) {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, EXTERNAL_POLICY).unwrap();
    let control = dir.join("engine.sock");
    let bin = Command::new(env!("CARGO_BIN_EXE_itest-engine"));
    let mut c = daemons::engine_command(bin, &policy, broker, &control, log).unwrap();
    c.env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    (c, control)
}

/// READY=1 arrives once the daemon serves (its socket accepts), STOPPING=1 on SIGTERM, then
/// a clean exit.
fn ready_then_stopping(mut cmd: Command, manager: &FakeManager, socket: &Path, log: &Path) {
    let mut p = ChildGuard::spawn(cmd.env("NOTIFY_SOCKET", &manager.address)).unwrap();
    let ready = manager.next(Duration::from_secs(60), log);
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(UnixStream::connect(socket).is_ok(), "READY=1 before {} serves", socket.display());
    let log_text = std::fs::read_to_string(log).unwrap();
    assert!(log_text.contains("confined"), "READY=1 before confinement: {log_text}");
    p.signal(Signal::SIGTERM).unwrap();
    let stopping = manager.next(Duration::from_secs(30), log);
    assert!(stopping.starts_with("STOPPING=1\nSTATUS=stopping"), "{stopping:?}");
    let status = p.wait_exit(Duration::from_secs(60)).expect("did not exit after SIGTERM");
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(log).unwrap());
}

#[test]
fn the_broker_notifies_ready_and_stopping() {
    let dir = TempDir::with_mode("notify-broker", 0o755).unwrap();
    let socket = dir.path().join("broker.sock");
    let log = dir.path().join("broker.log");
    let manager = FakeManager::by_path(dir.path());
    ready_then_stopping(broker_command(&socket, &log), &manager, &socket, &log);
    let manager = FakeManager::abstract_name("broker");
    ready_then_stopping(broker_command(&socket, &log), &manager, &socket, &log);
}

#[test]
fn the_engine_notifies_ready_and_stopping() {
    let dir = TempDir::with_mode("notify-engine", 0o755).unwrap();
    let broker_socket = dir.path().join("broker.sock");
    let broker_log = dir.path().join("broker.log");
    let mut broker =
        serving(&mut broker_command(&broker_socket, &broker_log), &broker_socket, &broker_log);
    let log = dir.path().join("engine.log");
    for manager in [FakeManager::by_path(dir.path()), FakeManager::abstract_name("engine")] {
        let (cmd, control) = engine_command(dir.path(), &broker_socket, &log);
        ready_then_stopping(cmd, &manager, &control, &log);
    }
    // The READY status says the broker was reached.
    let manager = FakeManager::abstract_name("engine-status");
    let (mut cmd, _) = engine_command(dir.path(), &broker_socket, &log);
    let mut p = ChildGuard::spawn(cmd.env("NOTIFY_SOCKET", &manager.address)).unwrap();
    let ready = manager.next(Duration::from_secs(60), &log);
    assert!(ready.contains("watching 2 gateway(s); broker connected (pf-model"), "{ready:?}");
    // A reload's outcome is the status `systemctl status` shows: a refused policy, then
    // a good one.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, EXTERNAL_POLICY.replace("[[group]]", "[[group]]\nbogus = 1")).unwrap();
    p.signal(Signal::SIGHUP).unwrap();
    let refused = manager.next(Duration::from_secs(60), &log);
    assert!(
        refused.starts_with("STATUS=policy reload refused, the previous policy stays: ")
            && refused.contains("bogus"),
        "{refused:?}"
    );
    std::fs::write(&policy, EXTERNAL_POLICY).unwrap();
    p.signal(Signal::SIGHUP).unwrap();
    let reloaded = manager.next(Duration::from_secs(60), &log);
    assert!(reloaded.starts_with("STATUS=policy reloaded: "), "{reloaded:?}");
    drop(p);
    broker.signal(Signal::SIGTERM).unwrap();
    broker.wait_exit(Duration::from_secs(60));
}

#[test]
fn an_unusable_notify_socket_stops_the_start_with_a_reason() {
    let dir = TempDir::with_mode("notify-bad", 0o755).unwrap();
    let socket = dir.path().join("broker.sock");
    let log = dir.path().join("broker.log");
    let missing = dir.path().join("no-such-notify");
    let status = broker_command(&socket, &log).env("NOTIFY_SOCKET", &missing).status().unwrap();
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("NOTIFY_SOCKET=") && text.contains("cannot connect"), "{text}");
}

/// `JOURNAL_STREAM` as systemd sets it for a stream whose far end is `file`.
fn journal_stream_of(file: &Path) -> String {
    let m = std::fs::metadata(file).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

/// Start the confined engine against a broker that is not there, at debug level, until it
/// has logged its start; its log.
fn engine_log_with(journal_stream: Option<&str>, tag: &str) -> String {
    let dir = TempDir::with_mode(tag, 0o755).unwrap();
    let log = dir.path().join("engine.log");
    let (mut cmd, control) = engine_command(dir.path(), &dir.path().join("absent.sock"), &log);
    cmd.args(["--log-level", "debug"]);
    if let Some(v) = journal_stream {
        let v = if v == "match" { journal_stream_of(&log) } else { v.to_owned() };
        cmd.env("JOURNAL_STREAM", v);
    }
    let mut p = serving(&mut cmd, &control, &log);
    std::thread::sleep(Duration::from_millis(500));
    p.signal(Signal::SIGTERM).unwrap();
    p.wait_exit(Duration::from_secs(30)).expect("engine did not stop");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn log_lines_carry_their_priority_when_stderr_is_the_journal() {
    let text = engine_log_with(Some("match"), "journal-on");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3, "{text}");
    for line in &lines {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)),
            "a line without its priority: {line:?}\n{text}"
        );
    }
    let has =
        |prefix: &str, what: &str| lines.iter().any(|l| l.starts_with(prefix) && l.contains(what));
    assert!(has("<6>", "confined"), "{text}");
    assert!(has("<6>", "stopping"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("<7>")), "no debug line: {text}");
    assert!(has("<4>", "broker"), "the unreachable broker is a warning: {text}");
}

#[test]
fn log_lines_are_unchanged_without_the_journal() {
    for (stream, tag) in [(None, "journal-off"), (Some("1:2"), "journal-other")] {
        let text = engine_log_with(stream, tag);
        assert!(text.lines().count() > 3, "{text}");
        for line in text.lines() {
            assert!(!line.starts_with('<'), "{stream:?}: {line:?}");
        }
    }
}

#[test]
fn a_fatal_error_on_the_journal_is_at_priority_error() {
    let dir = TempDir::with_mode("journal-fatal", 0o755).unwrap();
    let log = dir.path().join("broker.log");
    let status = broker_command(&dir.path().join("b.sock"), &log)
        .env("JOURNAL_STREAM", journal_stream_of(&log))
        .args(["--log-level", "loud"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("<3>statecull-broker: --log-level loud: "), "{text:?}");
}

/// Run `cmd` in a private mount namespace whose `/dev` is an empty tmpfs with `/dev/log` a
/// link to `syslog`: the daemons' real syslog path, without touching the host's `/dev`.
fn with_dev_log(cmd: &Command, syslog: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /dev && ln -s \"$0\" /dev/log && exec \"$@\"")
        .arg(syslog)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Syslog messages until one contains `until`.
fn syslog_until(server: &UnixDatagram, until: &str, log: &Path) -> Vec<String> {
    server.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = server.recv(&mut buf).unwrap_or_else(|e| {
            panic!("{e}; got {got:?}; stderr: {}", std::fs::read_to_string(log).unwrap_or_default())
        });
        let m = String::from_utf8(buf[..n].to_vec()).unwrap();
        let done = m.contains(until);
        got.push(m);
        if done {
            return got;
        }
    }
}

/// `--log-target syslog`: each event one datagram `<PRI>TAG[PID]: ...`, facility daemon, at
/// its priority, also after confinement (the broker's seccomp list kills on anything not
/// allowed) and on the way out; nothing on standard error.
#[test]
fn both_daemons_log_to_syslog_with_a_priority_per_message() {
    if statecull_tests::skip_unless_root("both_daemons_log_to_syslog_with_a_priority_per_message") {
        return;
    }
    let dir = TempDir::with_mode("syslog", 0o755).unwrap();
    let syslog = dir.path().join("log");
    let server = UnixDatagram::bind(&syslog).unwrap();
    let broker_socket = dir.path().join("broker.sock");
    let broker_log = dir.path().join("broker.log");
    let mut cmd = broker_command(&broker_socket, &broker_log);
    cmd.args(["--log-target", "syslog"]);
    let mut broker = ChildGuard::spawn(
        with_dev_log(&cmd, &syslog).stderr(std::fs::File::create(&broker_log).unwrap()),
    )
    .unwrap();
    let got = syslog_until(&server, "broker listening", &broker_log);
    for m in &got {
        assert!(m.starts_with("<30>statecull-broker["), "{m:?}");
        assert!(!m.ends_with('\n'), "{m:?}");
    }
    assert!(got.iter().any(|m| m.contains("confined")), "{got:?}");

    let log = dir.path().join("engine.log");
    let (cmd, control) = engine_command(dir.path(), &dir.path().join("absent.sock"), &log);
    let mut cmd = with_dev_log(&cmd, &syslog);
    cmd.args(["--log-target", "syslog"]).stderr(std::fs::File::create(&log).unwrap());
    let mut engine = ChildGuard::spawn(&mut cmd).unwrap();
    let got = syslog_until(&server, "broker-lost", &log);
    assert!(
        got.iter().any(|m| m.starts_with("<28>statecull-engine[") && m.contains("unreachable")),
        "the lost broker is daemon.warning: {got:?}"
    );
    assert!(got.iter().any(|m| m.starts_with("<30>statecull-engine[")), "{got:?}");
    assert!(UnixStream::connect(&control).is_ok());
    engine.signal(Signal::SIGTERM).unwrap();
    let got = syslog_until(&server, "stopping", &log);
    assert!(got.last().unwrap().starts_with("<30>statecull-engine["), "{got:?}");
    assert!(engine.wait_exit(Duration::from_secs(30)).unwrap().success());

    // The broker, confined (seccomp: kill-process), still logs its stop to syslog.
    broker.signal(Signal::SIGTERM).unwrap();
    let got = syslog_until(&server, "stop requested", &broker_log);
    assert!(got.last().unwrap().starts_with("<30>statecull-broker["), "{got:?}");
    assert!(broker.wait_exit(Duration::from_secs(60)).unwrap().success());
    for f in [&broker_log, &log] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains("INFO"), "log lines on stderr: {text}");
    }
}

/// What a daemon writes straight to standard error (the loud `--no-sandbox` warning) is
/// filed at its priority too, like the log lines.
#[test]
fn the_no_sandbox_warning_on_the_journal_is_a_warning() {
    let dir = TempDir::with_mode("journal-nosandbox", 0o755).unwrap();
    let socket = dir.path().join("b.sock");
    let log = dir.path().join("broker.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_itest-broker"));
    cmd.args(["--backend", "pf-model", "--model-states", "10", "--no-sandbox", "--socket"])
        .arg(&socket)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    cmd.env("JOURNAL_STREAM", journal_stream_of(&log));
    let mut p = serving(&mut cmd, &socket, &log);
    p.signal(Signal::SIGTERM).unwrap();
    assert!(p.wait_exit(Duration::from_secs(60)).unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l.starts_with("<4>statecull-broker: *** --no-sandbox")), "{text}");
    for line in text.lines() {
        assert!(line.starts_with('<'), "a line without its priority: {line:?}\n{text}");
    }
}

/// The engine under a real journald, started in a private mount namespace over its own
/// tmpfs `/run` (volatile storage, no kernel messages, nothing forwarded), its standard
/// error given to the journal by `systemd-cat` with `JOURNAL_STREAM` set as systemd sets
/// it. The script runs as root; it leaves nothing behind (the namespace dies with it).
const UNDER_JOURNALD: &str = r#"
set -eu
out=$1; shift
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n' \
    > /run/systemd/journald.conf.d/test.conf
engine=
"$JOURNALD" </dev/null >/dev/null 2>&1 & journald=$!
# Whatever happens, neither outlives the script (they would hold the test's pipes).
trap 'kill $engine $journald 2>/dev/null || true' EXIT
i=0; while [ ! -S /run/systemd/journal/stdout ]; do i=$((i+1)); [ $i -lt 100 ]; sleep 0.1; done
# systemd-cat execs the engine with both output streams on one journal stream.
systemd-cat -t statecull-engine sh -c \
    'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); export JOURNAL_STREAM; exec "$@"' \
    engine "$@" </dev/null >/dev/null 2>&1 & engine=$!
i=0; while ! "$CLI" status --control "$CONTROL" >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ]; sleep 0.1; done
# Routed at once: the plan runs now, so the reloads do not wait for it.
"$CLI" gateway WAN1 down --routed --control "$CONTROL"
cp "$POLICY" "$POLICY.good"
sed 's/^\[\[group\]\]$/[[group]]\nbogus = 1/' "$POLICY.good" > "$POLICY"
if "$CLI" reload --control "$CONTROL"; then echo "a bad policy was reloaded"; exit 1; fi
cp "$POLICY.good" "$POLICY"
"$CLI" reload --control "$CONTROL"
kill "$engine"; wait "$engine" || true; engine=
journalctl -D /run/log/journal -t statecull-engine -p warning -o json > "$out/warning"
journalctl -D /run/log/journal -t statecull-engine -o json > "$out/all"
kill "$journald"; wait "$journald" || true; journald=
"#;

/// `journalctl -p warning` shows the engine's warnings and nothing less serious: journald
/// itself reads the `<N>` prefixes (the other tests check the prefixes; this one checks
/// that journald takes them as meant). Root only, and only where systemd-journald exists.
#[test]
fn journalctl_p_warning_shows_the_engines_warnings_and_nothing_less() {
    let test = "journalctl_p_warning_shows_the_engines_warnings_and_nothing_less";
    if statecull_tests::skip_unless_root(test) {
        return;
    }
    let Some(journald) = ["/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("SKIP {test}: no systemd-journald on this machine");
        return;
    };
    let dir = TempDir::with_mode("journald", 0o755).unwrap();
    let broker_socket = dir.path().join("broker.sock");
    let broker_log = dir.path().join("broker.log");
    let mut broker =
        serving(&mut broker_command(&broker_socket, &broker_log), &broker_socket, &broker_log);
    let log = dir.path().join("engine.log");
    let (engine, control) = engine_command(dir.path(), &broker_socket, &log);
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", UNDER_JOURNALD, "sh"])
        .arg(dir.path())
        .arg(engine.get_program())
        .args(engine.get_args())
        .args(["--log-format", "json"])
        .env("JOURNALD", journald)
        .env("CLI", env!("CARGO_BIN_EXE_itest-statecull"))
        .env("CONTROL", &control)
        .env("POLICY", dir.path().join("policy.toml"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    broker.signal(Signal::SIGTERM).unwrap();
    broker.wait_exit(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Each record: journald's PRIORITY and the engine's JSON line in MESSAGE.
    let records = |file: &str| -> Vec<(u8, serde_json::Value)> {
        std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                let priority = r["PRIORITY"].as_str().unwrap().parse().unwrap();
                let message = r["MESSAGE"].as_str().unwrap();
                (priority, serde_json::from_str(message).unwrap_or(message.into()))
            })
            .collect()
    };
    let all = records("all");
    let warnings = records("warning");
    let shown = |rs: &[(u8, serde_json::Value)]| {
        rs.iter().map(|(p, m)| format!("<{p}> {m}")).collect::<Vec<_>>().join("\n")
    };
    let kind = |m: &serde_json::Value| m["kind"].as_str().unwrap_or("").to_owned();
    // Everything was there at its level: the start at info, the reloads, the gateway down.
    assert!(all.iter().any(|(p, m)| *p == 6 && kind(m) == "engine-started"), "{}", shown(&all));
    assert!(all.iter().any(|(p, m)| *p == 6 && kind(m) == "policy-reloaded"), "{}", shown(&all));
    for (p, m) in &all {
        let level = m["level"].as_str().unwrap_or("");
        let expected = match level {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            _ => 7,
        };
        assert_eq!(*p, expected, "{m}");
    }
    // -p warning: the gateway down and the refused reload, and nothing at info or below.
    let kinds: Vec<String> = warnings.iter().map(|(_, m)| kind(m)).collect();
    assert!(kinds.iter().any(|k| k == "gateway-down"), "{}", shown(&warnings));
    assert!(kinds.iter().any(|k| k == "policy-reload-failed"), "{}", shown(&warnings));
    assert!(warnings.iter().all(|(p, _)| *p <= 4), "{}", shown(&warnings));
    assert!(warnings.len() < all.len(), "{}", shown(&warnings));
    eprintln!("journalctl -t statecull-engine -p warning:\n{}", shown(&warnings));
}
