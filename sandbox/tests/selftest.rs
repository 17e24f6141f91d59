//! Confinement on the real kernel (root only): `statecull-sandbox-selftest` confines itself
//! with `statecull_sandbox::confine` (user `nobody`, each in a private network namespace) and
//! tries one thing; what must fail fails, what the daemons need still works.
//!
//! Denied means: exit 1 (EPERM or EACCES from seccomp or Landlock), or, for the broker whose
//! profile kills, death by SIGSYS. The engine's profile fails calls with EPERM, so SIGSYS there
//! is a failure of the test.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_statecull-sandbox-selftest");

/// The test kit's convention: skip with a visible note when not root (no conntrack needed
/// here), fail instead when STATECULL_REQUIRE_ROOT_TESTS=1.
fn skip_unless_root(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root".to_owned())
    } else if nix::unistd::User::from_name("nobody").ok().flatten().is_none() {
        Some("needs a user named nobody".to_owned())
    } else {
        None
    };
    statecull_testkit::skip_if(test, why)
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Seen {
    Allowed,
    Denied,
    /// Killed by SIGSYS (the broker's profile).
    Killed,
    ConfineFailed,
    Other,
}

struct Run {
    seen: Seen,
    stdout: String,
}

fn run(role: &str, action: &str, extra: &[&str]) -> Run {
    let out = Command::new(BIN).args([role, action]).args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let seen = match (out.status.code(), out.status.signal()) {
        (Some(0), _) => Seen::Allowed,
        (Some(1), _) => Seen::Denied,
        (Some(2), _) => Seen::ConfineFailed,
        (_, Some(s)) if s == libc::SIGSYS => Seen::Killed,
        _ => Seen::Other,
    };
    if seen == Seen::Other {
        eprintln!(
            "{role} {action}: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Run { seen, stdout }
}

fn expect_denied(role: &str, action: &str, extra: &[&str]) {
    let r = run(role, action, extra);
    let ok = match role {
        "broker" => matches!(r.seen, Seen::Denied | Seen::Killed),
        _ => r.seen == Seen::Denied,
    };
    assert!(ok, "{role} {action}: expected denied, got {:?}\n{}", r.seen, r.stdout);
}

fn expect_allowed(role: &str, action: &str, extra: &[&str]) {
    let r = run(role, action, extra);
    assert_eq!(r.seen, Seen::Allowed, "{role} {action}: expected allowed\n{}", r.stdout);
}

/// The kernel's Landlock ABI as the report shows it (0: none).
fn landlock_abi(report: &str) -> u32 {
    let line = report.lines().find(|l| l.trim_start().starts_with("landlock:")).unwrap_or("");
    if line.contains("not supported") {
        return 0;
    }
    let after = line.split("kernel with ABI ").nth(1).or_else(|| line.split("kernel ABI ").nth(1));
    after
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A directory and file `nobody` can reach, removed on drop.
struct Scratch(statecull_testkit::TempDir);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = statecull_testkit::TempDir::with_mode(&format!("sbx-{tag}"), 0o755).unwrap();
        let f = dir.path().join("readable.txt");
        std::fs::write(&f, "policy\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        Scratch(dir)
    }
    fn dir(&self) -> &str {
        self.0.path().to_str().unwrap()
    }
    fn file(&self) -> String {
        self.0.path().join("readable.txt").to_str().unwrap().to_owned()
    }
}

fn note(msg: &str) {
    let _ = std::io::stderr().write_all(format!("NOTE {msg}\n").as_bytes());
}

#[test]
fn confined_engine_can_work_and_nothing_else() {
    if skip_unless_root("confined_engine_can_work_and_nothing_else") {
        return;
    }
    let ok = run("engine", "ok", &[]);
    assert_eq!(ok.seen, Seen::Allowed, "{}", ok.stdout);
    for want in [
        "user:          nobody",
        "effective: none",
        "permitted: none",
        "bounding: none",
        "inheritable: none",
        "ambient: none",
        "no_new_privs:  yes",
        "seccomp:       filter,",
        "denied syscalls fail with EPERM",
    ] {
        assert!(ok.stdout.contains(want), "missing {want:?} in\n{}", ok.stdout);
    }
    let abi = landlock_abi(&ok.stdout);
    note(&format!("engine: Landlock ABI {abi} on this kernel"));

    // What the engine needs after confinement.
    expect_allowed("engine", "spawn-thread", &[]);
    let scratch = Scratch::new("engine");
    expect_allowed("engine", "unix-connect", &["--dir", scratch.dir()]);

    // What it must never do; seccomp alone refuses all of these.
    for action in [
        "open-passwd",
        "exec",
        "netlink-socket",
        "raw-socket",
        "netfilter-socket",
        "ptrace",
        "regain-caps",
        "spawn-process",
    ] {
        expect_denied("engine", action, &[]);
    }
    // Landlock's part: TCP connect on a socket made before confinement (ABI 4), abstract
    // sockets made outside the sandbox (ABI 6).
    if abi >= 4 {
        expect_denied("engine", "tcp-connect", &[]);
    } else {
        note("engine tcp-connect not checked: Landlock ABI < 4 cannot refuse TCP connect");
    }
    if abi >= 6 {
        expect_denied("engine", "abstract-connect", &[]);
    } else {
        note("engine abstract-connect not checked: Landlock ABI < 6 has no scoping");
    }
}

#[test]
fn engine_reads_only_its_readable_paths() {
    if skip_unless_root("engine_reads_only_its_readable_paths") {
        return;
    }
    let scratch = Scratch::new("readable");
    let file = scratch.file();
    let args = ["--readable", file.as_str()];
    let ok = run("engine", "ok", &args);
    assert_eq!(ok.seen, Seen::Allowed, "{}", ok.stdout);
    assert!(ok.stdout.contains("except reading"), "{}", ok.stdout);
    expect_allowed("engine", "read-allowed", &args);
    // Read-only: seccomp refuses the write-mode open whatever Landlock does.
    expect_denied("engine", "write-readable", &args);
    // With openat allowed, other paths are Landlock's to refuse.
    if landlock_abi(&ok.stdout) >= 1 {
        expect_denied("engine", "open-passwd", &args);
    } else {
        note("open-passwd with readable paths not checked: no Landlock on this kernel");
    }
    // A readable path that does not exist is an error, not a smaller sandbox.
    let missing = format!("{}/missing", scratch.dir());
    let r = run("engine", "ok", &["--readable", missing.as_str()]);
    assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
    assert!(r.stdout.contains("readable path"), "{}", r.stdout);
}

#[test]
fn confined_broker_keeps_conntrack_and_nothing_else() {
    if skip_unless_root("confined_broker_keeps_conntrack_and_nothing_else") {
        return;
    }
    let ok = run("broker", "ok", &[]);
    assert_eq!(ok.seen, Seen::Allowed, "{}", ok.stdout);
    for want in [
        "user:          nobody",
        "effective: CAP_NET_ADMIN\n",
        "permitted: CAP_NET_ADMIN\n",
        "bounding: CAP_NET_ADMIN\n",
        "inheritable: none",
        "ambient: none",
        "no_new_privs:  yes",
        "denied syscalls kill the process",
    ] {
        assert!(ok.stdout.contains(want), "missing {want:?} in\n{}", ok.stdout);
    }
    expect_allowed("broker", "netfilter-socket", &[]);
    expect_allowed("broker", "spawn-thread", &[]);
    let scratch = Scratch::new("broker");
    for action in [
        "open-passwd",
        "exec",
        "netlink-socket",
        "raw-socket",
        "tcp-connect",
        "ptrace",
        "regain-caps",
        "spawn-process",
        "abstract-connect",
    ] {
        expect_denied("broker", action, &[]);
    }
    expect_denied("broker", "unix-connect", &["--dir", scratch.dir()]);
    // The broker reads no file: a plan giving it one is refused before anything changes.
    let file = scratch.file();
    let r = run("broker", "ok", &["--readable", file.as_str()]);
    assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
}

#[test]
fn confinement_refuses_what_it_cannot_do_fully() {
    if skip_unless_root("confinement_refuses_what_it_cannot_do_fully") {
        return;
    }
    for role in ["engine", "broker"] {
        let r = run(role, "threads-refused", &[]);
        assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
        assert!(r.stdout.contains("one thread, it has 2"), "{}", r.stdout);
        let r = run(role, "ok", &["--user", "statecull-no-such-user"]);
        assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
        assert!(r.stdout.contains("does not exist"), "{}", r.stdout);
    }
}

/// Started like the systemd units start them (root, a bounding set holding only what start-up
/// needs), via util-linux's setpriv; and refused, before changing anything, without it.
#[test]
fn starts_with_the_units_bounding_sets() {
    if skip_unless_root("starts_with_the_units_bounding_sets") {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        note("setpriv (util-linux) not installed: unit-like bounding sets not checked");
        return;
    }
    let under = |bounding: &str, role: &str| -> Run {
        let out = Command::new("setpriv")
            .args(["--bounding-set", bounding, "--inh-caps=-all", BIN, role, "ok", "--host-netns"])
            .output()
            .unwrap();
        let seen = match out.status.code() {
            Some(0) => Seen::Allowed,
            Some(2) => Seen::ConfineFailed,
            _ => Seen::Other,
        };
        Run { seen, stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
    };
    let r = under("-all,+net_admin,+setuid,+setgid,+setpcap", "broker");
    assert_eq!(r.seen, Seen::Allowed, "{}", r.stdout);
    assert!(r.stdout.contains("bounding: CAP_NET_ADMIN\n"), "{}", r.stdout);
    let r = under("-all,+setuid,+setgid,+setpcap", "engine");
    assert_eq!(r.seen, Seen::Allowed, "{}", r.stdout);
    assert!(r.stdout.contains("bounding: none"), "{}", r.stdout);
    let r = under("-all,+setuid,+setgid", "engine");
    assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
    assert!(r.stdout.contains("lacks CAP_SETPCAP"), "{}", r.stdout);
    let r = under("-all,+setuid,+setgid,+setpcap", "broker");
    assert_eq!(r.seen, Seen::ConfineFailed, "{}", r.stdout);
    assert!(r.stdout.contains("needs CAP_NET_ADMIN"), "{}", r.stdout);
}

#[test]
fn helper_exists() {
    assert!(Path::new(BIN).exists());
}
