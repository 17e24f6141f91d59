//! A short version of `cargo xtask lab` (root only): the two-WAN failover with both daemons
//! confined, real traffic, ISP1 blackholed and back; every acceptance condition must hold.
//! Once with the main-table layout, once with mwan3's (`cargo xtask lab --mwan3`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::PathBuf;
use std::time::Duration;

use statecull_tests::failover::{Bins, LabOptions, run_lab};
use statecull_tests::skip_unless_root;

#[test]
fn a_short_lab_meets_every_acceptance_condition() {
    if skip_unless_root("a_short_lab_meets_every_acceptance_condition") {
        return;
    }
    let bins = Bins {
        broker: PathBuf::from(env!("CARGO_BIN_EXE_itest-broker")),
        engine: PathBuf::from(env!("CARGO_BIN_EXE_itest-engine")),
        cli: PathBuf::from(env!("CARGO_BIN_EXE_itest-statecull")),
    };
    let opts = LabOptions {
        duration: Duration::from_secs(15),
        sessions: 40,
        table_size: 0,
        keep: false,
        policy: None,
        json: false,
        compare: false,
        mwan3: false,
    };
    let report = run_lab(&bins, &opts).unwrap_or_else(|e| panic!("the lab did not run: {e}"));
    report.print(&opts);
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.pass).map(|c| &c.what).collect();
    assert!(failed.is_empty(), "failed acceptance conditions: {failed:#?}");
}

/// The same with the firewall laid out as mwan3 lays it out: the routing manager switches
/// the marking policy (not the routes) and runs `contrib/mwan3/mwan3.user`, whose
/// `down --routed` confirms the switch rtnetlink cannot see.
#[test]
fn a_short_mwan3_lab_meets_every_acceptance_condition() {
    if skip_unless_root("a_short_mwan3_lab_meets_every_acceptance_condition") {
        return;
    }
    let bins = Bins {
        broker: PathBuf::from(env!("CARGO_BIN_EXE_itest-broker")),
        engine: PathBuf::from(env!("CARGO_BIN_EXE_itest-engine")),
        cli: PathBuf::from(env!("CARGO_BIN_EXE_itest-statecull")),
    };
    let opts = LabOptions {
        duration: Duration::from_secs(15),
        sessions: 40,
        table_size: 0,
        keep: false,
        policy: None,
        json: false,
        compare: false,
        mwan3: true,
    };
    let report = run_lab(&bins, &opts).unwrap_or_else(|e| panic!("the lab did not run: {e}"));
    report.print(&opts);
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.pass).map(|c| &c.what).collect();
    assert!(failed.is_empty(), "failed acceptance conditions: {failed:#?}");
}
