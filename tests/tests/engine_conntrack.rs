//! The engine on real conntrack, in private namespaces (root only): ICMP probes through a
//! veth pair to an "ISP" namespace that stops answering drive the whole path — detection,
//! decision, settle delay, kill of exactly WAN1's states (ct mark 1), trailing sweep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecull_cli::BrokerClient;
use statecull_conntrack::fill::TableSpec;
use statecull_control::{Event, EventKind};
use statecull_proto::{MarkMatch, Selector};
use statecull_tests::lab::{EngineProcess, TwoWanLab, conntrack_policy};
use statecull_tests::{BrokerProcess, skip_unless_root};

const ENTRIES: u64 = 10_000;

fn mark(m: u32) -> Selector {
    Selector { mark: Some(MarkMatch { value: m, mask: 0xff }), ..Selector::default() }
}

fn counts(socket: &Path) -> (u64, u64) {
    let mut c = BrokerClient::connect(socket, "engine test").unwrap();
    let r = c.count(vec![mark(1), mark(2)]).unwrap();
    (r.per_selector[0], r.per_selector[1])
}

fn events(control: &Path) -> Vec<Event> {
    let cli = Path::new(env!("CARGO_BIN_EXE_itest-statecull"));
    statecull_tests::daemons::events(cli, control).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn probes_through_a_veth_drive_detection_and_a_kill_of_exactly_wan1() {
    if skip_unless_root("probes_through_a_veth_drive_detection_and_a_kill_of_exactly_wan1") {
        return;
    }
    let lab = TwoWanLab::create("e").unwrap();
    lab.fw.fill(&TableSpec::two_wans(ENTRIES)).unwrap();
    let broker =
        BrokerProcess::start(Path::new(env!("CARGO_BIN_EXE_itest-broker")), &lab.fw, &[]).unwrap();
    let (wan1_before, wan2_before) = counts(broker.socket());
    assert!(wan1_before > 1000 && wan2_before > 1000);
    let mut engine = EngineProcess::start(
        Path::new(env!("CARGO_BIN_EXE_itest-engine")),
        &lab.fw,
        &conntrack_policy(broker.socket(), 100),
        &[],
    )
    .unwrap();
    let control = engine.control().to_path_buf();

    // Healthy first: answered probes and no down event.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(engine.running(), "engine exited: {}", engine.log_text());
        {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
                .args(["status", "--json", "--control"])
                .arg(&control)
                .output()
                .unwrap();
            if out.status.success() {
                let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if st["gateways"][0]["samples"].as_u64().unwrap_or(0) >= 5 {
                    assert_eq!(st["gateways"][0]["state"], "up", "{st}");
                    assert!(st["gateways"][0]["latency_ms"].as_f64().is_some(), "{st}");
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "engine never got probe answers: {}", engine.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // ISP1 silently stops answering; the link stays up.
    let cut_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    lab.set_answering(0, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let evs = loop {
        let evs = events(&control);
        if evs.iter().any(|e| e.kind == EventKind::SweepDone) {
            break evs;
        }
        assert!(Instant::now() < deadline, "no kill and sweep: {evs:#?}\n{}", engine.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |k: EventKind| {
        evs.iter().find(|e| e.kind == k).unwrap_or_else(|| panic!("no {k}: {evs:#?}"))
    };
    let down = find(EventKind::GatewayDown);
    assert_eq!(down.gateway.as_deref(), Some("WAN1"));
    assert!(
        !evs.iter()
            .any(|e| e.kind == EventKind::GatewayDown && e.gateway.as_deref() == Some("WAN2"))
    );
    let done = find(EventKind::PlanDone);
    assert_eq!(done.killed, Some(wan1_before), "{done:?}");
    let (wan1_after, wan2_after) = counts(broker.socket());
    assert_eq!(wan1_after, 0, "every WAN1 state gone");
    assert_eq!(wan2_after, wan2_before, "WAN2 untouched");
    assert_eq!(evs.iter().filter(|e| e.kind == EventKind::PlanStarted).count(), 1);
    println!(
        "detection: {} ms from the cut to the down decision; decision to kill done: {} ms; killed {}",
        down.unix_ms.saturating_sub(cut_ms),
        done.unix_ms.saturating_sub(down.unix_ms),
        wan1_before
    );
    drop(engine);
    drop(broker);
}
