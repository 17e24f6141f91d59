//! `statecull broker list --format conntrack` against `conntrack -L` itself, on the same real
//! conntrack table in a private network namespace: every line the same, but for what the
//! listing does not carry (`use=`) and the seconds left (the two listings are taken moments
//! apart).
//!
//! Root only; skips loudly without root or without the `conntrack` tool (and fails instead
//! under `STATECULL_REQUIRE_ROOT_TESTS=1`, as in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeSet;
use std::path::Path;

use statecull_conntrack::fill::TableSpec;
use statecull_tests::{BrokerProcess, Netns, skip_if, skip_unless_root};

/// A line without its timeout (third field) and without `use=N`.
fn comparable(line: &str) -> String {
    let mut fields: Vec<&str> =
        line.split_whitespace().filter(|f| !f.starts_with("use=")).collect();
    if fields.len() > 2 && fields[2].parse::<u64>().is_ok() {
        fields.remove(2);
    }
    fields.join(" ")
}

#[test]
fn list_format_conntrack_prints_conntrack_ls_lines() {
    if skip_unless_root("list_format_conntrack_prints_conntrack_ls_lines") {
        return;
    }
    let conntrack_tool = std::process::Command::new("conntrack").arg("--version").output();
    if skip_if(
        "list_format_conntrack_prints_conntrack_ls_lines",
        conntrack_tool.is_err().then(|| "the conntrack tool is not installed".to_owned()),
    ) {
        return;
    }
    statecull_tests::remove_stale_namespaces();
    let ns = Netns::create("lsfmt").expect("create namespace");
    // TCP and UDP, IPv4 and IPv6, SNAT to two WAN addresses, marks.
    let spec = TableSpec::two_wans(300);
    let loaded = ns.fill(&spec).expect("fill conntrack table");
    assert_eq!(loaded.inserted, spec.entries);
    let broker = BrokerProcess::start(Path::new(env!("CARGO_BIN_EXE_itest-broker")), &ns, &[])
        .expect("start broker");

    let ours = std::process::Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(["broker", "--socket"])
        .arg(broker.socket())
        .args(["list", "--format", "conntrack"])
        .output()
        .unwrap();
    assert!(ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
    let theirs = ns.command("conntrack").args(["-L"]).output().unwrap();
    assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));

    let ours_text = String::from_utf8(ours.stdout).unwrap();
    let theirs_text = String::from_utf8(theirs.stdout).unwrap();
    let ours_lines: BTreeSet<String> = ours_text.lines().map(comparable).collect();
    let theirs_lines: BTreeSet<String> = theirs_text.lines().map(comparable).collect();
    assert_eq!(ours_lines.len() as u64, spec.entries, "{ours_text}");
    let only_ours: Vec<_> = ours_lines.difference(&theirs_lines).take(5).collect();
    let only_theirs: Vec<_> = theirs_lines.difference(&ours_lines).take(5).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "lines differ\n statecull: {only_ours:#?}\n conntrack -L: {only_theirs:#?}"
    );
    // The timeouts are there too, in conntrack's place.
    let first = ours_text.lines().next().unwrap();
    assert!(first.split_whitespace().nth(2).unwrap().parse::<u64>().is_ok(), "{first}");
    drop(broker);
}
