//! `nat_addr = "interface"` on real conntrack, in private namespaces (root only): the
//! confined engine learns WAN1's new address when it changes (as after a DHCP renewal with a
//! new lease), and a kill after the change takes exactly the states NAT'd to the new
//! address, WAN2's untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use statecull_cli::BrokerClient;
use statecull_conntrack::fill::{TableSpec, WAN2, Wan};
use statecull_control::{Event, EventKind};
use statecull_proto::Selector;
use statecull_tests::lab::{EngineProcess, TwoWanLab};
use statecull_tests::{BrokerProcess, daemons, skip_unless_root};

const CLI: &str = env!("CARGO_BIN_EXE_itest-statecull");
const ENTRIES: u64 = 4_000;
/// WAN1's address after the "new lease".
const NEW_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

fn nat(a: Ipv4Addr) -> Selector {
    Selector { nat_addr: Some(std::net::IpAddr::V4(a)), ..Selector::default() }
}

fn counts(socket: &Path) -> (u64, u64) {
    let mut c = BrokerClient::connect(socket, "engine test").unwrap();
    let r = c.count(vec![nat(NEW_ADDR), nat(Ipv4Addr::new(203, 0, 113, 1))]).unwrap();
    (r.per_selector[0], r.per_selector[1])
}

fn statecull(control: &Path, args: &[&str]) -> std::process::Output {
    daemons::statecull(Path::new(CLI), control, args).unwrap()
}

fn events(control: &Path) -> Vec<Event> {
    daemons::events(Path::new(CLI), control).unwrap_or_else(|e| panic!("{e}"))
}

/// What `statecull plan --down WAN1` would kill: each selector with its count.
fn planned(control: &Path) -> Vec<(String, Option<u64>)> {
    let out = statecull(control, &["plan", "--down", "WAN1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["steps"][0]["selectors"].clone()).unwrap_or_default()
}

fn policy(broker: &Path) -> String {
    format!(
        r#"[engine]
broker_socket = "{}"
states_refresh = "off"

[routing]
confirm = "delay"
settle_timeout = "300ms"
sweep_delay = "0s"

[[gateway]]
name = "WAN1"
interface = "wan1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
nat_addr = "interface"

[[gateway]]
name = "WAN2"
interface = "wan2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
        broker.display()
    )
}

#[test]
fn the_engine_follows_a_renumbered_wan_and_kills_the_states_of_its_new_address() {
    let test = "the_engine_follows_a_renumbered_wan_and_kills_the_states_of_its_new_address";
    if skip_unless_root(test) {
        return;
    }
    let lab = TwoWanLab::create("n").unwrap();
    // WAN1's states are NAT'd to the address the interface will get, and carry no mark.
    let wan1 =
        Wan { mark: 0, nat_v4: NEW_ADDR, nat_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1) };
    let spec = TableSpec {
        wans: [wan1, WAN2],
        marked: false,
        ipv6_percent: 0,
        ..TableSpec::two_wans(ENTRIES)
    };
    lab.fw.fill(&spec).unwrap();
    let broker =
        BrokerProcess::start(Path::new(env!("CARGO_BIN_EXE_itest-broker")), &lab.fw, &[]).unwrap();
    let (wan1_states, wan2_states) = counts(broker.socket());
    assert!(wan1_states > 1000 && wan2_states > 1000, "{wan1_states} {wan2_states}");
    let mut engine = EngineProcess::start(
        Path::new(env!("CARGO_BIN_EXE_itest-engine")),
        &lab.fw,
        &policy(broker.socket()),
        &[],
    )
    .unwrap();
    let control = engine.control().to_path_buf();

    // Before: WAN1 has 198.51.100.1, which no state is NAT'd to.
    let before = planned(&control);
    eprintln!("before the new lease, statecull plan --down WAN1: {before:?}");
    assert_eq!(before, [("nat-addr 198.51.100.1".to_owned(), Some(0))], "{}", engine.log_text());

    // The new lease: the new address comes, the old one goes (promoted, as systemd sets it).
    let ip = |args: &[&str]| {
        let ok = lab.fw.command("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    let ok = lab
        .fw
        .command("sysctl")
        .args(["-qw", "net.ipv4.conf.wan1.promote_secondaries=1"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok);
    ip(&["addr", "add", "198.51.100.77/24", "dev", "wan1"]);
    ip(&["addr", "del", "198.51.100.1/24", "dev", "wan1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let p = planned(&control);
        if p.iter().any(|(s, _)| s.contains("198.51.100.77")) {
            break p;
        }
        assert!(
            engine.running() && Instant::now() < deadline,
            "not learnt: {p:?}\n{}",
            engine.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "after `ip addr add 198.51.100.77/24; ip addr del 198.51.100.1/24` on wan1: {after:?}"
    );
    // The new address, and the old one kept for five minutes.
    assert_eq!(
        after,
        [
            ("nat-addr 198.51.100.77".to_owned(), Some(wan1_states)),
            ("nat-addr 198.51.100.1".to_owned(), Some(0)),
        ]
    );

    // WAN1 fails: exactly the states NAT'd to its new address go.
    let out = statecull(&control, &["gateway", "WAN1", "down", "--routed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        if let Some(e) = events(&control).into_iter().find(|e| e.kind == EventKind::PlanDone) {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no kill: {:#?}\n{}",
            events(&control),
            engine.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "statecull gateway WAN1 down --routed: {}: {} (killed {:?})",
        done.kind, done.message, done.killed
    );
    assert_eq!(done.killed, Some(wan1_states), "{done:?}");
    let left = counts(broker.socket());
    eprintln!(
        "left: NAT'd to 198.51.100.77 {}, to WAN2's 203.0.113.1 {} (of {wan2_states})",
        left.0, left.1
    );
    assert_eq!(left, (0, wan2_states), "WAN1's gone, WAN2's untouched");
    assert!(engine.running());
}
