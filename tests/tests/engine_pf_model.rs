//! The engine driving a pf-model broker, no root needed: a scripted failure (an external
//! `gateway WAN1 down`) gives exactly one plan, the kill waits for the routing signal, the
//! trailing sweep runs once, and what died is exactly what the model says belongs to WAN1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use statecull_cli::BrokerClient;
use statecull_control::{Event, EventKind};
use statecull_pf::table_gen::{Kind, Spec, router_table};
use statecull_proto::{StateHandle, StateRecord};
use statecull_tests::daemons::{engine_command, model_broker_command};
use statecull_tests::{ChildGuard, TempDir};

const STATES: usize = 20_000;
const SEED: u64 = 7;

/// Spawn the daemon `cmd` and wait for its socket (failing with its log), under a guard
/// that stops it as a service manager would when the test ends, also when it fails:
/// SIGTERM, and SIGKILL if it has not exited within 10 s.
fn serving(cmd: &mut Command, socket: &Path, log: &Path) -> ChildGuard {
    ChildGuard::spawn_serving(cmd, socket, Duration::from_secs(60), log)
        .unwrap_or_else(|e| panic!("{e}"))
        .terminate_on_drop(Duration::from_secs(10))
}

fn start_broker(dir: &Path) -> (ChildGuard, PathBuf) {
    let socket = dir.join("broker.sock");
    let log = dir.join("broker.log");
    let bin = Path::new(env!("CARGO_BIN_EXE_itest-broker"));
    let mut cmd = model_broker_command(bin, STATES, &socket, &log).unwrap();
    cmd.args(["--model-seed", &SEED.to_string()]);
    (serving(&mut cmd, &socket, &log), socket)
}

/// The model's two gateways, with external health sources (the tests say up and down; no
/// hold-down, so an `up` is used at once).
const WAN1_WAN2: &str = r#"
[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
hold_down = "0s"
[gateway.states]
rt_addr = "198.51.100.254"
nat_addr = ["198.51.100.1"]
interface = "igb1"

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
hold_down = "0s"
[gateway.states]
rt_addr = "203.0.113.254"
nat_addr = ["203.0.113.1"]
interface = "igb2"
"#;

/// Routing confirmed by signal only, a short sweep; WAN1 tier 1, WAN2 tier 2.
fn policy() -> String {
    format!(
        r#"
[routing]
confirm = "signal"
settle_timeout = "60s"
sweep_delay = "500ms"
{WAN1_WAN2}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
on_recovery = "keep"
"#
    )
}

fn start_engine(dir: &Path, broker: &Path) -> (ChildGuard, PathBuf) {
    start_engine_with(dir, broker, &policy())
}

fn start_engine_with(dir: &Path, broker: &Path, policy_text: &str) -> (ChildGuard, PathBuf) {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text).unwrap();
    let control = dir.join("engine.sock");
    let log = dir.join("engine.log");
    let bin = Command::new(env!("CARGO_BIN_EXE_itest-engine"));
    let mut cmd = engine_command(bin, &policy, broker, &control, &log).unwrap();
    cmd.args(["--log-format", "json"]);
    (serving(&mut cmd, &control, &log), control)
}

fn statecull(control: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(args)
        .arg("--control")
        .arg(control)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "statecull {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn events(control: &Path) -> Vec<Event> {
    let cli = Path::new(env!("CARGO_BIN_EXE_itest-statecull"));
    statecull_tests::daemons::events(cli, control).unwrap_or_else(|e| panic!("{e}"))
}

fn count(evs: &[Event], kind: EventKind) -> usize {
    evs.iter().filter(|e| e.kind == kind).count()
}

fn snapshot(socket: &Path) -> Vec<StateRecord> {
    let mut c = BrokerClient::connect(socket, "engine test").unwrap();
    let mut all = Vec::new();
    c.snapshot(None, &mut |b| {
        all.extend(b);
        Ok(())
    })
    .unwrap();
    all
}

fn ids(records: &[StateRecord]) -> HashSet<u64> {
    records
        .iter()
        .map(|r| match r.handle {
            StateHandle::Pf { id, .. } => id,
            StateHandle::Conntrack { .. } => panic!("not pf"),
        })
        .collect()
}

#[test]
fn scripted_failure_one_plan_after_the_routing_signal_then_one_sweep() {
    let dir = TempDir::new("engine-pf").unwrap();
    let (_broker, broker_sock) = start_broker(dir.path());
    let (mut engine, control) = start_engine(dir.path(), &broker_sock);
    let before = ids(&snapshot(&broker_sock));

    // The dry run counts what would die and kills nothing.
    let dry: serde_json::Value =
        serde_json::from_str(&statecull(&control, &["plan", "--down", "WAN1"])).unwrap();
    assert_eq!(dry["counted"], true, "{dry}");
    assert!(dry["steps"][0]["would_kill"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(ids(&snapshot(&broker_sock)), before, "a dry run kills nothing");

    statecull(&control, &["gateway", "WAN1", "down"]);
    std::thread::sleep(Duration::from_millis(1500));
    let evs = events(&control);
    assert_eq!(count(&evs, EventKind::GatewayDown), 1, "{evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanStarted), 0, "no kill before routing moved: {evs:#?}");
    assert_eq!(ids(&snapshot(&broker_sock)), before, "nothing killed before the routing signal");

    let signalled = Instant::now();
    statecull(&control, &["gateway", "WAN1", "routed"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(&control);
        if count(&evs, EventKind::SweepDone) > 0 || count(&evs, EventKind::PlanFailed) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no sweep: {evs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let a wrongly repeated sweep or plan show itself.
    std::thread::sleep(Duration::from_millis(1200));
    let evs = events(&control);
    assert_eq!(count(&evs, EventKind::PlanFailed), 0, "{evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanStarted), 1, "exactly one plan: {evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanDone), 1, "{evs:#?}");
    assert_eq!(count(&evs, EventKind::SweepDone), 1, "exactly one sweep: {evs:#?}");
    let seq = |k: EventKind| evs.iter().find(|e| e.kind == k).map(|e| e.seq).unwrap();
    assert!(seq(EventKind::Routed) < seq(EventKind::PlanStarted), "{evs:#?}");
    assert!(signalled.elapsed() < Duration::from_secs(30));

    let after = ids(&snapshot(&broker_sock));
    let gone: HashSet<u64> = before.difference(&after).copied().collect();
    let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
    assert_eq!(done.killed, Some(gone.len() as u64), "reported kills = states gone: {done:?}");
    let sweep = evs.iter().find(|e| e.kind == EventKind::SweepDone).unwrap();
    assert_eq!(sweep.killed, Some(0), "nothing was born on WAN1 meanwhile: {sweep:?}");

    // Against the model: every IPv4 WAN1 connection lost both states (policy-routed ones by
    // rt_addr, default-route ones by interface + NAT address); nothing of WAN2 died.
    let g = router_table(&Spec::new(STATES, SEED)).unwrap();
    let v4 = |ids: &[u64]| {
        g.model
            .get(ids[0], g.model.hostid())
            .is_some_and(|s| s.wire.af == statecull_pf::types::AF_INET)
    };
    let mut wan1 = 0;
    for conn in &g.connections {
        let all_gone = conn.ids.iter().all(|id| gone.contains(id));
        let none_gone = conn.ids.iter().all(|id| !gone.contains(id));
        match conn.kind {
            Kind::PolicyWan1 | Kind::DefaultWan1 if v4(&conn.ids) => {
                wan1 += 1;
                assert!(all_gone, "WAN1 connection left alive: {conn:?}");
            }
            k if k.wan() == Some(1) => assert!(none_gone, "WAN2 touched: {conn:?}"),
            Kind::LanToFirewall => assert!(none_gone, "{conn:?}"),
            _ => {}
        }
    }
    assert!(wan1 > 100, "the table has WAN1 connections to kill ({wan1})");
    let stopped = engine.terminate(Duration::from_secs(10)).unwrap();
    assert!(stopped.is_some(), "the engine did not stop on SIGTERM");
    // Confined, it cannot remove its socket file (no filesystem access); nothing listens
    // there any more, and the next start replaces it.
    assert!(std::os::unix::net::UnixStream::connect(&control).is_err(), "nothing listens");
}

#[test]
fn a_plan_waits_for_a_restarted_broker_and_is_not_lost() {
    let dir = TempDir::new("engine-pf-restart").unwrap();
    let (broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine(dir.path(), &broker_sock);
    // The engine has met the broker (status counts through it).
    statecull(&control, &["status"]);
    drop(broker);

    statecull(&control, &["gateway", "WAN1", "down", "--routed"]);
    std::thread::sleep(Duration::from_millis(1500));
    let evs = events(&control);
    assert_eq!(count(&evs, EventKind::PlanDone), 0, "no broker, no kill yet: {evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanFailed), 0, "the plan waits: {evs:#?}");

    let (_broker, _) = start_broker(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(&control);
        if count(&evs, EventKind::PlanDone) > 0 {
            let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
            assert!(done.killed.unwrap() > 100, "{done:?}");
            assert_eq!(count(&evs, EventKind::PlanFailed), 0, "{evs:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "the pending plan never ran: {evs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ids(&snapshot(&broker_sock)).len() < STATES, "the restarted broker's table was cut");
}

/// Three WANs: WAN1 and WAN2 (the model's gateways) at tier 1, a spare WAN3 at tier 2.
fn three_wans() -> String {
    format!(
        r#"
[routing]
confirm = "signal"
settle_timeout = "60s"
sweep_delay = "2s"
{WAN1_WAN2}
[[gateway]]
name = "WAN3"
interface = "igb3"
address = "192.0.2.254"
health_source = "external"
[gateway.states]
rt_addr = "192.0.2.254"
nat_addr = ["192.0.2.1"]
interface = "igb3"

[[group]]
name = "all"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 1 }}, {{ gateway = "WAN3", tier = 2 }} ]
on_down = "gateway"
"#
    )
}

#[test]
fn gateways_failing_together_are_one_plan_and_one_table_pass() {
    let dir = TempDir::new("engine-pf-two").unwrap();
    let (_broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &three_wans());
    statecull(&control, &["gateway", "WAN1", "down"]);
    statecull(&control, &["gateway", "WAN2", "down"]);
    statecull(&control, &["gateway", "WAN1", "routed"]);
    statecull(&control, &["gateway", "WAN2", "routed"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(&control);
        if count(&evs, EventKind::PlanDone) > 0 || count(&evs, EventKind::PlanFailed) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no plan: {evs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let evs = events(&control);
    assert_eq!(count(&evs, EventKind::PlanStarted), 1, "one plan for both: {evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanDone), 1, "{evs:#?}");
    let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
    let field = |k: &str| done.fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // One listing for both gateways: a walk for the victims, then one for their twins
    // (pairing in one walk would hold the whole table in memory), not a walk per gateway.
    assert_eq!(field("path"), Some("dump-and-delete"), "{done:?}");
    assert_eq!(field("table_passes"), Some("2"), "one listing for both gateways: {done:?}");
    assert!(field("killed_WAN1").is_some_and(|n| n != "0"), "{done:?}");
    assert!(field("killed_WAN2").is_some_and(|n| n != "0"), "{done:?}");
    // Everything of both gateways (IPv4) is gone.
    let mut c = BrokerClient::connect(&broker_sock, "engine test").unwrap();
    let left = c
        .count(vec![
            statecull_proto::Selector {
                gateway: Some("198.51.100.254".parse().unwrap()),
                ..Default::default()
            },
            statecull_proto::Selector {
                gateway: Some("203.0.113.254".parse().unwrap()),
                ..Default::default()
            },
        ])
        .unwrap();
    assert_eq!(left.per_selector, vec![0, 0]);
}

#[test]
fn the_sweep_leaves_a_gateway_alone_that_came_back_meanwhile() {
    let dir = TempDir::new("engine-pf-back").unwrap();
    let (_broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &three_wans());
    statecull(&control, &["gateway", "WAN1", "down", "--routed"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&events(&control), EventKind::PlanDone) == 0 {
        assert!(Instant::now() < deadline, "no plan");
        std::thread::sleep(Duration::from_millis(50));
    }
    // WAN1 is back before the 2 s sweep: its (new) states are healthy and must stay.
    statecull(&control, &["gateway", "WAN1", "up"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sweep = loop {
        if let Some(e) = events(&control).into_iter().find(|e| e.kind == EventKind::SweepDone) {
            break e;
        }
        assert!(Instant::now() < deadline, "no sweep event");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sweep.killed, Some(0), "{sweep:?}");
    assert!(sweep.message.contains("skipped"), "{sweep:?}");
}

// ---------------------------------------------------------------------------------------
// Fail-back with on_recovery = "kill-unprotected": the twins of what it kills go too.

/// An in-process pf-model broker (so the test can add states to its table while the engine
/// runs), serving on a socket the engine may use.
struct InProcessBroker {
    backend: std::sync::Arc<
        statecull_broker::backend::pf::PfBackend<statecull_pf::model_device::ModelDevice>,
    >,
    socket: PathBuf,
    stop: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessBroker {
    fn start(dir: &Path, model: statecull_pf::model::PfModel) -> Self {
        use statecull_pf::model_device::{ModelDevice, Release};
        let rows = model.rows() as u64;
        let client =
            statecull_pf::client::PfClient::probe(ModelDevice::new(model, Release::FREEBSD_14))
                .unwrap();
        let backend = std::sync::Arc::new(
            statecull_broker::backend::pf::PfBackend::with_second_lane(
                client,
                statecull_proto::BackendKind::PfModel,
                "pf model".into(),
                rows,
            )
            .unwrap(),
        );
        let socket = dir.join("broker.sock");
        let mut config =
            statecull_broker::config::Config { socket: socket.clone(), ..Default::default() };
        config.allowed_uids.push(nix::unistd::geteuid().as_raw());
        if nix::unistd::geteuid().is_root() {
            let uid = statecull_broker::config::resolve_user(statecull_tests::TEST_USER).unwrap();
            config.allowed_uids.insert(0, uid);
            config.socket_gid =
                Some(statecull_broker::config::resolve_group(statecull_tests::TEST_GROUP).unwrap());
        }
        let server = statecull_broker::server::Server::bind(
            config,
            Box::new(std::sync::Arc::clone(&backend)),
        )
        .unwrap();
        let (stop_read, stop_write) = nix::unistd::pipe().unwrap();
        let thread = std::thread::spawn(move || server.run(stop_read).unwrap());
        Self { backend, socket, stop: Some(stop_write), thread: Some(thread) }
    }

    fn insert(&self, s: statecull_pf::types::PfState) -> u64 {
        self.backend.with_device(|d| d.model().insert(s)).unwrap()
    }
}

impl Drop for InProcessBroker {
    fn drop(&mut self) {
        if let Some(w) = self.stop.take() {
            let _ = nix::unistd::write(&w, b"x");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// WAN1 tier 1, WAN2 tier 2; fail-back kills what is left on WAN2 but SIP.
fn fail_back_policy() -> String {
    format!(
        r#"
[routing]
confirm = "signal"
settle_timeout = "60s"
sweep_delay = "60s"
{WAN1_WAN2}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
on_recovery = "kill-unprotected"

[[protect]]
name = "sip"
proto = "udp"
ports = [5060]
"#
    )
}

/// A default-route connection opened while WAN1 was down: the LAN-side IN state (no
/// route-to, so no gateway to select it by) and its twin NAT'd out of WAN2.
fn default_route_via_wan2(
    proto: u8,
    client: u8,
    cport: u16,
    dport: u16,
) -> [statecull_pf::types::PfState; 2] {
    use statecull_pf::table_gen::ROUTER;
    use statecull_pf::types::{AF_INET, Direction, PfKey, PfState};
    let c: std::net::IpAddr = std::net::Ipv4Addr::new(192, 0, 2, client).into();
    let s: std::net::IpAddr = std::net::Ipv4Addr::new(198, 18, 7, 7).into();
    let nat: std::net::IpAddr = ROUTER.wan_addr[1].0.into();
    let key = |a0, p0, a1, p1| PfKey { af: AF_INET, proto, addr: [a0, a1], port: [p0, p1] };
    let state = |direction, ifname: &str, wire, stack| PfState {
        id: 0,
        creatorid: 0,
        direction,
        ifname: ifname.into(),
        orig_ifname: ifname.into(),
        wire,
        stack,
        rt_addr: None,
        rule: u32::MAX,
        packets: [1, 1],
        bytes: [60, 60],
        creation: 5,
        expire: 600,
    };
    let lan = key(c, cport, s, dport);
    [
        state(Direction::In, ROUTER.lan_if, lan, lan),
        state(Direction::Out, ROUTER.wan_if[1], key(s, dport, nat, cport), lan.swapped()),
    ]
}

fn wait_for_plans(control: &Path, n: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(control);
        assert_eq!(count(&evs, EventKind::PlanFailed), 0, "{evs:#?}");
        if count(&evs, EventKind::PlanDone) >= n {
            return evs;
        }
        assert!(Instant::now() < deadline, "plan {n} never finished: {evs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fail_back_kill_unprotected_kills_the_twins_of_what_it_kills() {
    let dir = TempDir::new("engine-pf-failback").unwrap();
    let g = router_table(&Spec::new(4000, SEED)).unwrap();
    let broker = InProcessBroker::start(dir.path(), g.model.clone());
    let (_engine, control) = start_engine_with(dir.path(), &broker.socket, &fail_back_policy());

    statecull(&control, &["gateway", "WAN1", "down", "--routed"]);
    wait_for_plans(&control, 1);

    // While WAN1 is down the default route leaves by WAN2: new connections NAT'd there.
    let tcp = statecull_proto::ipproto::TCP;
    let udp = statecull_proto::ipproto::UDP;
    let mut unprotected = Vec::new();
    for i in 0..40u16 {
        let [lan, wan] = default_route_via_wan2(tcp, 10 + (i % 20) as u8, 41_000 + i, 443);
        unprotected.push((broker.insert(lan), broker.insert(wan)));
    }
    let mut sip = Vec::new();
    for i in 0..5u16 {
        let [lan, wan] = default_route_via_wan2(udp, 60 + i as u8, 5060 + i, 5060);
        sip.push((broker.insert(lan), broker.insert(wan)));
    }
    let before = ids(&snapshot(&broker.socket));

    statecull(&control, &["gateway", "WAN1", "up"]);
    statecull(&control, &["gateway", "WAN1", "routed"]);
    let evs = wait_for_plans(&control, 2);
    let after = ids(&snapshot(&broker.socket));
    let gone: HashSet<u64> = before.difference(&after).copied().collect();
    let done = evs.iter().filter(|e| e.kind == EventKind::PlanDone).nth(1).unwrap();
    assert_eq!(done.killed, Some(gone.len() as u64), "reported kills = states gone: {done:?}");

    for (lan, wan) in &unprotected {
        assert!(gone.contains(wan), "the WAN2 state of a default-route connection survived");
        assert!(gone.contains(lan), "its LAN-side twin was left in limbo");
    }
    for (lan, wan) in &sip {
        assert!(!gone.contains(wan) && !gone.contains(lan), "a protected flow was killed");
    }
    // Nothing but WAN2's connections died: the firewall's LAN conversations stay.
    for conn in &g.connections {
        if conn.kind == Kind::LanToFirewall {
            assert!(conn.ids.iter().all(|id| !gone.contains(id)), "{conn:?}");
        }
    }
    let unrelated = gone
        .iter()
        .filter(|id| {
            !unprotected.iter().any(|(l, w)| l == *id || w == *id)
                && !g.connections.iter().any(|c| c.kind.wan() == Some(1) && c.ids.contains(id))
        })
        .count();
    assert_eq!(unrelated, 0, "states of neither WAN2 nor the failure were killed");
}

/// `confirm = "pf-ruleset"` with a given settle timeout.
fn ruleset_policy(settle: &str) -> String {
    format!(
        r#"
[routing]
confirm = "pf-ruleset"
settle_timeout = "{settle}"
sweep_delay = "0s"
{WAN1_WAN2}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#
    )
}

fn field<'a>(e: &'a Event, k: &str) -> Option<&'a str> {
    e.fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn wait_for(control: &Path, kind: EventKind, within: Duration) -> Vec<Event> {
    let deadline = Instant::now() + within;
    loop {
        let evs = events(control);
        if count(&evs, kind) > 0 {
            return evs;
        }
        assert!(Instant::now() < deadline, "no {kind:?} within {within:?}: {evs:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// pfSense and OPNsense move `route-to` off a dead gateway by reloading the ruleset: with
/// `confirm = "pf-ruleset"` nothing is killed before the commit, and the kill follows it
/// within a poll or two.
#[test]
fn pf_ruleset_confirmation_kills_right_after_the_ruleset_commit_and_not_before() {
    let dir = TempDir::new("engine-pf-ruleset").unwrap();
    let (mut broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &ruleset_policy("60s"));
    let before = ids(&snapshot(&broker_sock));

    statecull(&control, &["gateway", "WAN1", "down"]);
    std::thread::sleep(Duration::from_millis(1500));
    let evs = events(&control);
    assert_eq!(count(&evs, EventKind::GatewayDown), 1, "{evs:#?}");
    assert_eq!(count(&evs, EventKind::Routed), 0, "no commit, no confirmation: {evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanStarted), 0, "no kill before the commit: {evs:#?}");
    assert_eq!(ids(&snapshot(&broker_sock)), before, "nothing killed before the commit");

    // The firewall reloads its rules (the model's stand-in for `pfctl -f`).
    let committed = Instant::now();
    let committed_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    broker.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let evs = wait_for(&control, EventKind::PlanDone, Duration::from_secs(30));
    let took = committed.elapsed();
    eprintln!("ruleset commit -> plan-done seen by the test: {took:?}");
    // Far under the 60 s settle timeout; the kill itself (20,000 states, a debug build on a
    // shared machine) takes most of it. The commit's confirmation is bounded below.
    assert!(took < Duration::from_secs(10), "the kill followed the commit late: {took:?}");
    let routed = evs.iter().find(|e| e.kind == EventKind::Routed).unwrap();
    assert_eq!(field(routed, "confirmed"), Some("true"), "{routed:?}");
    assert_eq!(field(routed, "via"), Some("pf ruleset reloaded"), "{routed:?}");
    let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
    assert!(done.killed.unwrap() > 100, "{done:?}");
    assert_eq!(count(&evs, EventKind::PlanFailed), 0, "{evs:#?}");
    let confirmed_after = routed.unix_ms.saturating_sub(committed_ms);
    eprintln!(
        "SIGUSR1 -> routed event: {confirmed_after} ms; routed -> plan-done: {} ms",
        done.unix_ms.saturating_sub(routed.unix_ms)
    );
    assert!(confirmed_after < 1000, "the commit was seen late: {confirmed_after} ms");
    let gone = before.len() - ids(&snapshot(&broker_sock)).len();
    assert_eq!(done.killed, Some(gone as u64), "{done:?}");
}

/// No commit within `settle_timeout`: the plan runs anyway, reported unconfirmed.
#[test]
fn pf_ruleset_confirmation_times_out_and_kills_unconfirmed() {
    let dir = TempDir::new("engine-pf-ruleset-late").unwrap();
    let (_broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &ruleset_policy("1s"));
    let decided = Instant::now();
    statecull(&control, &["gateway", "WAN1", "down"]);
    let evs = wait_for(&control, EventKind::PlanDone, Duration::from_secs(30));
    let took = decided.elapsed();
    assert!(took >= Duration::from_millis(900), "killed before the settle timeout: {took:?}");
    let routed = evs.iter().find(|e| e.kind == EventKind::Routed).unwrap();
    assert_eq!(field(routed, "confirmed"), Some("false"), "{routed:?}");
    assert_eq!(field(routed, "via"), Some("pf ruleset not reloaded"), "{routed:?}");
    let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
    assert!(done.killed.unwrap() > 100, "{done:?}");
}

/// The firewall can reload before the engine decides (its dpinger alarm came first): the
/// ticket read in the background shortly before the decision is the wait's first one, so a
/// reload just before the decision confirms at once instead of waiting for `settle_timeout`.
#[test]
fn pf_ruleset_reload_just_before_the_decision_confirms_at_once() {
    let dir = TempDir::new("engine-pf-ruleset-early").unwrap();
    let (mut broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &ruleset_policy("60s"));
    // Let the background readings cover more than the lookback (2 s) before the reload.
    std::thread::sleep(Duration::from_millis(3500));
    broker.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let decided = Instant::now();
    statecull(&control, &["gateway", "WAN1", "down"]);
    let evs = wait_for(&control, EventKind::PlanDone, Duration::from_secs(30));
    assert!(decided.elapsed() < Duration::from_secs(10), "waited for the settle timeout");
    let routed = evs.iter().find(|e| e.kind == EventKind::Routed).unwrap();
    assert_eq!(field(routed, "confirmed"), Some("true"), "{routed:?}");
    assert_eq!(field(routed, "via"), Some("pf ruleset reloaded"), "{routed:?}");
}

// ---------------------------------------------------------------------------------------
// A pfSense configuration imported as it is, run against the pf model.

/// A stand-in dpinger at `path` (it follows dpinger's status socket: one line per
/// connection, `NAME LATENCY_US STDDEV_US LOSS_PCT`); `line` is what it reports now.
fn dpinger_stand_in(
    path: &Path,
    line: std::sync::Arc<std::sync::Mutex<String>>,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    // The engine may run as the test user.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = std::sync::Arc::clone(&polls);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = line.lock().unwrap().clone();
            let _ = s.write_all(now.as_bytes());
        }
    });
    polls
}

/// `statecull import pfsense` on a config.xml of the model's router (LAN igb0, WAN1 igb1,
/// WAN2 igb2, a failover group), used as generated but for where dpinger's sockets are: the
/// engine reads both WANs from dpinger stand-ins, WAN1's dpinger raises its alarm (100 %
/// loss), the engine decides, waits for the ruleset reload the imported policy asks for
/// (`confirm = "pf-ruleset"`), and kills exactly WAN1's connections: both states of each,
/// nothing of WAN2.
#[test]
fn an_imported_pfsense_configuration_fails_over_against_the_model() {
    let dir = TempDir::new("engine-pf-import").unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/import/tests/fixtures/pfsense/model-router.xml");
    let generated = dir.path().join("imported.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(["import", "pfsense"])
        .arg(&fixture)
        .arg("--output")
        .arg(&generated)
        .output()
        .unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.contains("killed twice"), "the import says to turn pfSense's off: {warnings}");
    let imported = std::fs::read_to_string(&generated).unwrap();
    assert!(imported.contains("confirm = \"pf-ruleset\""), "{imported}");

    // Only the dpinger sockets move: pfSense keeps them in /var/run.
    let sockets = dir.path().join("dpinger");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let policy = imported.replace("/var/run/dpinger_", &format!("{}/dpinger_", sockets.display()));
    let healthy = |name: &str| format!("{name} 12000 800 0\n");
    let wan1 = std::sync::Arc::new(std::sync::Mutex::new(healthy("WAN1")));
    let wan2 = std::sync::Arc::new(std::sync::Mutex::new(healthy("WAN2")));
    let wan1_polls = dpinger_stand_in(
        &sockets.join("dpinger_WAN1~198.51.100.1~192.0.2.53.sock"),
        std::sync::Arc::clone(&wan1),
    );
    let wan2_polls = dpinger_stand_in(
        &sockets.join("dpinger_WAN2~203.0.113.1~203.0.113.254.sock"),
        std::sync::Arc::clone(&wan2),
    );

    let (mut broker, broker_sock) = start_broker(dir.path());
    let (_engine, control) = start_engine_with(dir.path(), &broker_sock, &policy);
    let before = ids(&snapshot(&broker_sock));

    // Both gateways up from dpinger's reports; the dry run counts WAN1's states.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dry = loop {
        let dry: serde_json::Value =
            serde_json::from_str(&statecull(&control, &["plan", "--down", "WAN1"])).unwrap();
        if dry["steps"][0]["would_kill"].as_u64().is_some_and(|n| n > 0) {
            break dry;
        }
        assert!(Instant::now() < deadline, "no plan for WAN1 down: {dry}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(wan1_polls.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(wan2_polls.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(ids(&snapshot(&broker_sock)), before, "a dry run kills nothing");

    // dpinger raises WAN1's alarm; the engine decides on its own and waits for the reload.
    *wan1.lock().unwrap() = "WAN1 0 0 100\n".to_owned();
    let evs = wait_for(&control, EventKind::GatewayDown, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1000));
    let evs_now = events(&control);
    assert_eq!(count(&evs_now, EventKind::PlanStarted), 0, "no kill before the reload: {evs:#?}");
    assert_eq!(ids(&snapshot(&broker_sock)), before, "nothing killed before the reload");

    // pfSense's alarm hook reloads the ruleset (the model's stand-in for `pfctl -f`).
    broker.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let evs = wait_for(&control, EventKind::SweepDone, Duration::from_secs(60));
    assert_eq!(count(&evs, EventKind::PlanDone), 1, "{evs:#?}");
    assert_eq!(count(&evs, EventKind::PlanFailed), 0, "{evs:#?}");
    let routed = evs.iter().find(|e| e.kind == EventKind::Routed).unwrap();
    assert_eq!(field(routed, "via"), Some("pf ruleset reloaded"), "{routed:?}");

    let after = ids(&snapshot(&broker_sock));
    let gone: HashSet<u64> = before.difference(&after).copied().collect();
    let done = evs.iter().find(|e| e.kind == EventKind::PlanDone).unwrap();
    assert_eq!(done.killed, Some(gone.len() as u64), "{done:?}");
    // The dry run counts the victims; the kill also takes their twins.
    let victims = dry["steps"][0]["would_kill"].as_u64().unwrap();
    assert!(victims <= gone.len() as u64 && gone.len() as u64 <= 2 * victims, "{dry}");
    let g = router_table(&Spec::new(STATES, SEED)).unwrap();
    let v4 = |ids: &[u64]| {
        g.model
            .get(ids[0], g.model.hostid())
            .is_some_and(|s| s.wire.af == statecull_pf::types::AF_INET)
    };
    let mut wan1_conns = 0;
    for conn in &g.connections {
        let all_gone = conn.ids.iter().all(|id| gone.contains(id));
        let none_gone = conn.ids.iter().all(|id| !gone.contains(id));
        match conn.kind {
            Kind::PolicyWan1 | Kind::DefaultWan1 if v4(&conn.ids) => {
                wan1_conns += 1;
                assert!(all_gone, "WAN1 connection left alive: {conn:?}");
            }
            k if k.wan() == Some(1) => assert!(none_gone, "WAN2 touched: {conn:?}"),
            Kind::LanToFirewall => assert!(none_gone, "{conn:?}"),
            _ => {}
        }
    }
    assert!(wan1_conns > 100, "the table has WAN1 connections to kill ({wan1_conns})");
}
