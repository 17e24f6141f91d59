//! Reloading the policy in the confined engine process (issue 13): SIGHUP and `statecull
//! reload` read the policy file again after confinement (Landlock keeps the policy's
//! directory readable, the seccomp list allows the read-only open), also when the file was
//! replaced by a rename as editors and package managers do; a bad file is refused with
//! file:line: field and the engine keeps running with the old policy. As root the engine
//! switches to `nobody`, so the file must be readable by it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use statecull_tests::daemons::{self, EXTERNAL_POLICY, engine_command};
use statecull_tests::{ChildGuard, TempDir};

const LTE: &str = r#"
[[gateway]]
name = "LTE"
interface = "wwan0"
address = "192.0.2.1"
health_source = "external"
[gateway.states]
nat_addr = ["192.0.2.10"]
"#;

/// Start the confined engine with its policy in `dir/etc/policy.toml` (readable by all, as
/// a packaged policy is by the engine's group).
fn start_engine(dir: &Path) -> (ChildGuard, PathBuf, PathBuf) {
    let etc = dir.join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = etc.join("policy.toml");
    write_policy(&policy, EXTERNAL_POLICY);
    let control = dir.join("engine.sock");
    let log = dir.join("engine.log");
    let mut cmd = engine_command(
        Command::new(env!("CARGO_BIN_EXE_itest-engine")),
        &policy,
        &dir.join("broker.sock"),
        &control,
        &log,
    )
    .unwrap();
    cmd.args(["--log-format", "json"]);
    let p = ChildGuard::spawn_serving(&mut cmd, &control, Duration::from_secs(60), &log)
        .unwrap_or_else(|e| panic!("{e}"));
    (p, control, policy)
}

/// Replace the file as an editor does: a new file renamed over the old one.
fn write_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn statecull(control: &Path, args: &[&str]) -> Output {
    daemons::statecull(Path::new(env!("CARGO_BIN_EXE_itest-statecull")), control, args).unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The engine's recent events as JSON lines (`statecull events --json`).
fn events(control: &Path) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"{\"events\":{\"follow\":false}}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["events"]["events"].as_array().cloned().unwrap_or_default()
}

/// The gateways `statecull status --json` lists.
fn gateways(control: &Path) -> Vec<String> {
    let out = statecull(control, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect()
}

fn of_kind(control: &Path, kind: &str) -> Vec<serde_json::Value> {
    events(control).into_iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn the_confined_engine_reloads_on_sighup_and_on_statecull_reload() {
    let dir = TempDir::new("engine-reload").unwrap();
    let (mut engine, control, policy) = start_engine(dir.path());

    // `statecull reload` with a new gateway: answered once in force.
    write_policy(&policy, &format!("{EXTERNAL_POLICY}{LTE}"));
    let out = statecull(&control, &["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("reloaded: 3 gateway(s), 1 group(s)"), "{said}");
    assert!(said.contains("new (assumed up until judged): LTE"), "{said}");
    assert_eq!(gateways(&control), ["WAN1", "WAN2", "LTE"]);

    // A bad file: exit status 1, file:line: field, the engine keeps the old policy.
    write_policy(&policy, &format!("{EXTERNAL_POLICY}{LTE}").replace("192.0.2.1\"", "192.0.2.x\""));
    let out = statecull(&control, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let at = format!("{}:", policy.display());
    assert!(said.contains(&at) && said.contains("gateway[3].address"), "{said}");
    assert!(said.contains("the policy in force stays"), "{said}");
    assert_eq!(gateways(&control), ["WAN1", "WAN2", "LTE"]);

    // SIGHUP, after another rename: LTE dropped.
    write_policy(&policy, EXTERNAL_POLICY);
    engine.signal(Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        let r = of_kind(&control, "policy-reloaded");
        if r.len() == 2 {
            break r;
        }
        assert!(Instant::now() < deadline, "no reload after SIGHUP: {:#?}", events(&control));
        std::thread::sleep(Duration::from_millis(50));
    };
    let last = &reloaded[1];
    assert!(last["message"].as_str().unwrap().contains("dropped: LTE"), "{last}");
    assert!(last["fields"].to_string().contains("SIGHUP"), "{last}");
    assert_eq!(of_kind(&control, "policy-reload-failed").len(), 1);
    assert_eq!(gateways(&control), ["WAN1", "WAN2"]);
    assert!(engine.running());

    // A file the engine's user cannot read: refused with the reason, engine alive.
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = statecull(&control, &["reload"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("cannot read it: Permission denied"), "{}", text(&out));
        assert!(text(&out).contains("must be readable by it"), "{}", text(&out));
        assert!(engine.running());
    }
}
