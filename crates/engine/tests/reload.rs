//! Reloading the policy (issue 13): `statecull reload` over the control socket and
//! `Shared::reload` (SIGHUP's path), against an in-process fake broker with the executor and
//! the engine's timer running. A good file is put in force with the gateways it keeps still
//! judged as before; a bad one, or one changing what start-up opened, is refused naming
//! file, line and field (or the key) and the old policy stays; a plan in flight finishes
//! under the policy it started with before the new one is used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, FakeBroker, TwoWans, verdict};
use statecull_control::{ControlReply, ControlRequest, Event, EventKind, GatewayAction};
use statecull_engine::broker::BrokerLink;
use statecull_engine::reload::{PolicyFile, StartUp};
use statecull_engine::state::Shared;
use statecull_testkit::TempDir;

/// The two WANs (`common::TwoWans`), external health; routing confirmed by `routed` signals
/// (so a test can hold a plan in flight), WAN1 without hold-down, recognised by
/// `wan1_states`.
fn policy(wan1_states: &str) -> String {
    TwoWans {
        routing: "confirm = \"signal\"\nsettle_timeout = \"20s\"",
        wan1: "health_source = \"external\"\nhold_down = \"0s\"",
        wan1_states,
        group: "",
    }
    .policy()
}

const ONE_SELECTOR: &str = r#"rt_addr = "198.51.100.254""#;
const TWO_SELECTORS: &str = "rt_addr = \"198.51.100.254\"\nnat_addr = [\"198.51.100.1\"]";

struct Engine {
    shared: Arc<Shared>,
    control: PathBuf,
    policy_path: PathBuf,
}

/// The engine started from `text` written to `dir/policy.toml`, with its executor, timer and
/// control socket.
fn engine(broker: &FakeBroker, dir: &TempDir, text: &str) -> Engine {
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, text).unwrap();
    let shared = common::engine(broker, text);
    shared.set_start_up(StartUp {
        policy: PolicyFile::by_path(&policy_path),
        broker_socket_flag: true,
        control_socket_flag: true,
        metrics_flag: false,
    });
    common::run_timer(&shared);
    let control = common::serve_control(&shared, dir);
    Engine { shared, control, policy_path }
}

/// One request as the CLI sends it; the engine's answer (a reload may wait for a plan).
async fn ask(path: &Path, req: &ControlRequest) -> ControlReply {
    common::ask_within(path, &serde_json::to_string(req).unwrap(), Duration::from_secs(40)).await
}

fn events_of(shared: &Shared, kind: EventKind) -> Vec<Event> {
    shared.bus().backlog().into_iter().filter(|e| e.kind == kind).collect()
}

fn state_of(shared: &Shared, name: &str) -> String {
    let (policy, facts) = shared.facts_now();
    let i = policy.gateway_index(name).unwrap();
    facts[i].state.name().to_owned()
}

/// A good file: gateways kept by name keep their health (WAN1 stays down, now at another
/// index), a removed one is dropped, a new one starts up; `statecull reload` answers what
/// changed and a `policy-reloaded` event says it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_policy_is_put_in_force_and_kept_gateways_keep_their_health() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-reload-good").unwrap();
    let e = engine(&broker, &dir, &policy(ONE_SELECTOR));
    verdict(&e.control, "WAN1", GatewayAction::Down).await;
    verdict(&e.control, "WAN1", GatewayAction::Routed).await;
    broker.wait_for("kill").await;
    assert_eq!(state_of(&e.shared, "WAN1"), "down");

    // WAN2 removed, LTE added first (WAN1 moves from index 0 to 1), WAN1's thresholds new.
    let new = r#"
[engine]
states_refresh = "off"

[routing]
confirm = "signal"
settle_timeout = "20s"
sweep_delay = "0s"

[[gateway]]
name = "LTE"
interface = "wwan0"
address = "192.0.2.1"
health_source = "external"
[gateway.states]
rt_addr = "192.0.2.1"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
hold_down = "5s"
[gateway.states]
rt_addr = "198.51.100.254"

[[group]]
name = "failover"
members = [ { gateway = "WAN1", tier = 1 }, { gateway = "LTE", tier = 2 } ]
"#;
    std::fs::write(&e.policy_path, new).unwrap();
    let message = match ask(&e.control, &ControlRequest::Reload).await {
        ControlReply::Done { message } => message,
        other => panic!("{other:?}"),
    };
    assert!(
        message.contains("reloaded: 2 gateway(s), 1 group(s); kept with their health: WAN1"),
        "{message}"
    );
    assert!(message.contains("new (assumed up until judged): LTE"), "{message}");
    assert!(message.contains("dropped: WAN2"), "{message}");
    let policy = e.shared.policy();
    assert_eq!(policy.gateway_names(), "LTE, WAN1");
    assert_eq!(state_of(&e.shared, "WAN1"), "down", "WAN1 keeps its health at its new index");
    assert_eq!(state_of(&e.shared, "LTE"), "up");
    assert_eq!(e.shared.usable(), [true, false]);
    let ev = events_of(&e.shared, EventKind::PolicyReloaded);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].fields.iter().any(|(k, v)| k == "via" && v == "statecull reload"), "{ev:?}");

    // Verdicts by name reach WAN1 at its new index: its up now waits for the new 5 s
    // hold-down (the old one was 0 s).
    let up = verdict(&e.control, "WAN1", GatewayAction::Up).await;
    assert!(up.contains("hold-down 5 s"), "{up}");
    assert_eq!(state_of(&e.shared, "WAN1"), "down");
}

/// A file that does not load, and one changing what start-up opened, are refused with
/// file:line: field (or the key); the policy in force stays, and `policy-reload-failed`
/// says why. SIGHUP's path (`Shared::reload`) answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_is_refused_and_the_old_one_stays() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-reload-bad").unwrap();
    let good = policy(ONE_SELECTOR);
    let e = engine(&broker, &dir, &good);
    let before = e.shared.policy();

    std::fs::write(&e.policy_path, good.replace("hold_down = \"0s\"", "hold_down = \"soon\""))
        .unwrap();
    let why = match ask(&e.control, &ControlRequest::Reload).await {
        ControlReply::Error { message } => message,
        other => panic!("{other:?}"),
    };
    let at = format!("{}:15: gateway[1].hold_down", e.policy_path.display());
    assert!(why.contains("not reloaded (the policy in force stays)"), "{why}");
    assert!(why.contains(&at), "{why} should name {at}");

    std::fs::write(&e.policy_path, good.replace("confirm = \"signal\"", "confirm = \"delay\""))
        .unwrap();
    let why = e.shared.reload("SIGHUP").await.unwrap_err();
    assert!(why.contains("routing.confirm: signal -> delay"), "{why}");
    assert!(why.ends_with("restart the engine to change it"), "{why}");

    std::fs::remove_file(&e.policy_path).unwrap();
    let why = e.shared.reload("SIGHUP").await.unwrap_err();
    assert!(why.contains("cannot read it"), "{why}");

    assert!(Arc::ptr_eq(&before, &e.shared.policy()), "the policy in force is the old one");
    let failed = events_of(&e.shared, EventKind::PolicyReloadFailed);
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert!(failed[0].message.contains(&at));
    assert!(failed[1].fields.iter().any(|(k, v)| k == "via" && v == "SIGHUP"));
    assert!(events_of(&e.shared, EventKind::PolicyReloaded).is_empty());
}

/// A plan waiting for routing when the reload comes finishes under its own policy (one
/// selector for WAN1), and only then is the new policy (two selectors) in force: the
/// reload's answer waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_in_flight_finishes_under_the_policy_it_started_with() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-reload-inflight").unwrap();
    let e = engine(&broker, &dir, &policy(ONE_SELECTOR));
    verdict(&e.control, "WAN1", GatewayAction::Down).await;
    assert!(e.shared.plan_pending(), "the plan waits for a routed signal");

    std::fs::write(&e.policy_path, policy(TWO_SELECTORS)).unwrap();
    let control = e.control.clone();
    let reload = tokio::spawn(async move { ask(&control, &ControlRequest::Reload).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!reload.is_finished(), "the reload waits for the plan in flight");
    assert_eq!(e.shared.policy().gateways[0].states.nat_addr.len(), 0);

    verdict(&e.control, "WAN1", GatewayAction::Routed).await;
    match tokio::time::timeout(Duration::from_secs(10), reload).await.unwrap().unwrap() {
        ControlReply::Done { message } => assert!(message.contains("reloaded"), "{message}"),
        other => panic!("{other:?}"),
    }
    let kills = broker.entries("kill");
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert!(kills[0].starts_with("kill:1#"), "the old policy's one selector: {kills:?}");
    assert_eq!(e.shared.policy().gateways[0].states.nat_addr.len(), 1);

    // The next failure is planned under the new policy: WAN1 back, down again.
    verdict(&e.control, "WAN1", GatewayAction::Up).await;
    verdict(&e.control, "WAN1", GatewayAction::Routed).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while e.shared.plan_pending() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the recovery's (empty) plan done");
    verdict(&e.control, "WAN1", GatewayAction::Down).await;
    verdict(&e.control, "WAN1", GatewayAction::Routed).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while broker.kills() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let ev: Vec<String> =
            e.shared.bus().backlog().iter().map(|e| format!("{} {}", e.kind, e.message)).collect();
        panic!("no second kill: {ev:#?}")
    });
    let kills = broker.entries("kill");
    assert!(kills[1].starts_with("kill:2#"), "the new policy's two selectors: {kills:?}");
}

/// An engine without a policy file (tests, embedding) says so.
#[tokio::test]
async fn an_engine_without_a_policy_file_has_nothing_to_reload() {
    let dir = TempDir::new("engine-reload-none").unwrap();
    let policy = statecull_policy::load::parse(&policy(ONE_SELECTOR), "x").unwrap();
    let (shared, _d, _m) = Shared::new(policy, BrokerLink::new(dir.path().join("no.sock")));
    let why = shared.reload("SIGHUP").await.unwrap_err();
    assert!(why.contains("nothing to reload"), "{why}");
}
