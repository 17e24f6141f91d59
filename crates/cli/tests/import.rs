//! `statecull import` as an operator runs it: the policy on standard output (it loads), the
//! warnings on standard error, `--strict` failing with nothing written, `--output` refusing
//! to replace a file without `--force`.
// clippy.toml allows these inside #[test] functions only; the helpers assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

fn statecull() -> Command {
    Command::new(env!("CARGO_BIN_EXE_statecull"))
}

fn fixture(system: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../import/tests/fixtures")
        .join(system)
        .join(name)
}

#[test]
fn import_prints_a_policy_that_loads_and_warns_on_stderr() {
    let out = statecull()
        .args(["import", "pfsense"])
        .arg(fixture("pfsense", "two-wan-failover.xml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy = String::from_utf8(out.stdout).unwrap();
    statecull_policy::load::parse(&policy, "<stdout>").unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("statecull import: warning: /pfsense/system/gw_down_kill_states (line 8)"),
        "{stderr}"
    );

    let strict = statecull()
        .args(["import", "pfsense", "--strict"])
        .arg(fixture("pfsense", "two-wan-failover.xml"))
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert!(strict.stdout.is_empty(), "nothing written with --strict");
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict"));

    let clean = statecull()
        .args(["import", "opnsense", "--strict"])
        .arg(fixture("opnsense", "load-balance.xml"))
        .output()
        .unwrap();
    assert!(clean.status.success(), "only notes: {}", String::from_utf8_lossy(&clean.stderr));
}

#[test]
fn import_output_is_written_once_and_replaced_only_with_force() {
    let dir = std::env::temp_dir().join(format!("statecull-cli-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("policy.toml");
    let _ = std::fs::remove_file(&dest);
    let run = |extra: &[&str]| {
        statecull()
            .args(["import", "opnsense"])
            .arg(fixture("opnsense", "dhcp-pppoe.xml"))
            .arg("--output")
            .arg(&dest)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(first.stdout.is_empty());
    let written = std::fs::read_to_string(&dest).unwrap();
    assert!(written.contains("PLACEHOLDER"));
    std::fs::write(&dest, "mine").unwrap();
    let second = run(&[]);
    assert_eq!(second.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "mine", "not replaced");
    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), written);
    let _ = std::fs::remove_dir_all(&dir);

    let wrong = statecull()
        .args(["import", "opnsense"])
        .arg(fixture("pfsense", "ipv6.xml"))
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("use `statecull import pfsense`"));
}
