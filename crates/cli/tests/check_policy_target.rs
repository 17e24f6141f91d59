//! `statecull check-policy --target-os`: the exit status and the section it prints, on the
//! shipped examples.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policy/examples").join(name)
}

fn check(name: &str, target: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statecull"))
        .args(["check-policy", "--target-os", target])
        .arg(example(name))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_pfsense_example_is_fine_for_freebsd() {
    let (code, out, err) = check("pfsense-two-wan.toml", "freebsd");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("On freebsd (as asked with --target-os; state table: pf):"), "{out}");
    assert!(!out.contains("  warning:") && !out.contains("  error:"), "{out}");
    assert!(out.contains("  note: gateway WAN2: health_source = \"icmp\" (raw ICMP sockets)"));
    assert!(out.ends_with("is a valid policy for freebsd.\n"), "{out}");
}

#[test]
fn a_linux_policy_fails_for_freebsd_and_says_why() {
    let (code, out, err) = check("linux-mwan-three-wan.toml", "freebsd");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("  error: [routing] confirm: confirm = \"rtnetlink\""), "{out}");
    assert!(out.contains("  warning: gateway fibre: [gateway.states] mark"), "{out}");
    assert!(err.contains("can never work on freebsd"), "{err}");
    let (code, out, err) = check("linux-mwan-three-wan.toml", "linux");
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn an_unknown_target_is_a_usage_error() {
    let (code, _, err) = check("pfsense-two-wan.toml", "openbsd");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("linux") && err.contains("freebsd"), "{err}");
}
