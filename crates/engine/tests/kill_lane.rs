//! Kills never wait (the scale issue, engine side), against an in-process fake broker
//! (`common`): kills have their own broker connection, a background count in flight when a
//! decision arrives is abandoned, a kill covering several gateways is credited from the
//! broker's per-selector report without counting first, and `status` never asks the
//! broker. Every property is an ordering of what the broker saw, not a timing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, FakeBroker, ask_line, field, killed_by_selector, serve_control};
use statecull_control::{ControlReply, Event, EventKind};
use statecull_engine::EngineError;
use statecull_engine::broker::BrokerLink;
use statecull_engine::state::Shared;
use statecull_proto::Selector;
use statecull_testkit::TempDir;

/// A count that would take this long unless abandoned: far longer than any test waits.
const SLOW: Duration = Duration::from_secs(30);

/// How the executor waits for routing in a test.
#[derive(Clone, Copy)]
enum Confirm {
    /// 50 ms, then the kill.
    Delay,
    /// Until the test signals `routed` (up to a minute): nothing is killed before.
    Signal,
}

/// Three gateways with external health, recognised the pf way (two selectors each); WAN1
/// and WAN2 share tier 1, WAN3 backs them up.
fn policy(refresh: &str, confirm: Confirm) -> String {
    let routing = match confirm {
        Confirm::Delay => "confirm = \"delay\"\nsettle_timeout = \"50ms\"",
        Confirm::Signal => "confirm = \"signal\"\nsettle_timeout = \"60s\"",
    };
    let gateway = |n: u8, net: &str| {
        format!(
            r#"
[[gateway]]
name = "WAN{n}"
interface = "igb{n}"
address = "{net}.254"
health_source = "external"
[gateway.states]
rt_addr = "{net}.254"
nat_addr = ["{net}.1"]
interface = "igb{n}"
"#
        )
    };
    format!(
        r#"
[engine]
states_refresh = "{refresh}"

[routing]
{routing}
sweep_delay = "0s"
{}{}{}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 1 }}, {{ gateway = "WAN3", tier = 2 }} ]
on_down = "gateway"
"#,
        gateway(1, "198.51.100"),
        gateway(2, "203.0.113"),
        gateway(3, "192.0.2")
    )
}

/// The engine's shared state against `broker`, with its executor running.
fn engine(broker: &FakeBroker, refresh: &str, confirm: Confirm) -> Arc<Shared> {
    common::engine(broker, &policy(refresh, confirm))
}

async fn wait_event(rx: &mut tokio::sync::broadcast::Receiver<Event>, kind: EventKind) -> Event {
    let wait = async {
        loop {
            let e = rx.recv().await.unwrap();
            if e.kind == kind {
                return e;
            }
            assert!(e.kind != EventKind::PlanFailed, "{e:?}");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the event in time")
}

fn selector() -> Selector {
    Selector { gateway: Some("198.51.100.254".parse().unwrap()), ..Default::default() }
}

/// The link alone: a kill sent while a background count is in flight reaches the broker
/// on its own connection before the count is answered, and the count is abandoned (its
/// connection dropped) rather than finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_reaches_the_broker_while_a_background_count_is_in_flight() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let link = Arc::new(BrokerLink::new(broker.path.clone()));
    let count = {
        let link = Arc::clone(&link);
        tokio::spawn(async move { link.call_background(|c| c.count(vec![selector()])).await })
    };
    broker.wait_for("count:1#").await;

    let r = link.call(|c| c.kill_matching(vec![selector()], false)).await.unwrap();
    assert_eq!(r.killed, killed_by_selector(0));
    let counted = tokio::time::timeout(Duration::from_secs(5), count).await.unwrap().unwrap();
    assert!(matches!(counted, Err(EngineError::Abandoned)), "{counted:?}");
    broker.wait_for("count-dropped#").await;

    let log = broker.log();
    let kill = broker.position("kill:1#").unwrap();
    assert!(broker.position("count-answered").is_none(), "the count was finished: {log:?}");
    // Two connections: the count's and the kill's.
    let conn = |i: usize| log[i].split('#').nth(1).unwrap().to_owned();
    assert_ne!(conn(broker.position("count:1#").unwrap()), conn(kill), "{log:?}");
    assert_eq!(broker.connections(), 2, "{log:?}");
}

/// A decision abandons the background count in flight at once, before routing is even
/// waited for: nothing the engine does competes with the coming kill. Background requests
/// then wait until the plan is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_abandons_a_background_count_and_holds_the_next_until_the_plan_is_done() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let link = Arc::new(BrokerLink::new(broker.path.clone()));
    let count = {
        let link = Arc::clone(&link);
        tokio::spawn(async move { link.call_background(|c| c.count(vec![selector()])).await })
    };
    broker.wait_for("count:1#").await;
    link.plan_decided();
    let counted = tokio::time::timeout(Duration::from_secs(5), count).await.unwrap().unwrap();
    assert!(matches!(counted, Err(EngineError::Abandoned)), "{counted:?}");
    broker.wait_for("count-dropped#").await;

    // While the plan is pending, nothing background is sent.
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        link.call_background(|c| c.count(vec![selector(), selector()])),
    )
    .await;
    assert!(held.is_err(), "a background count ran while a plan was pending: {held:?}");
    assert!(broker.position("count:2#").is_none(), "{:?}", broker.log());
    link.plans_done(1);
    let fast = {
        let link = Arc::clone(&link);
        tokio::spawn(async move { link.call_background(|c| c.count(vec![])).await })
    };
    broker.wait_for("count:0#").await;
    fast.abort();
}

/// The whole engine: the refresher's count is in flight (it would take 30 s) when WAN1 is
/// declared down. The decision alone drops that count, while the plan still waits for
/// routing (nothing is killed before the `routed` signal); then the kill goes out, and no
/// figure is recorded from the abandoned count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_abandons_the_refreshers_count_before_the_kill() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let shared = engine(&broker, "auto", Confirm::Signal);
    let (_, mut events) = shared.bus().subscribe_with_backlog();
    tokio::spawn(statecull_engine::states::run(Arc::clone(&shared)));
    broker.wait_for("count:6#").await;

    shared.force(0, false);
    broker.wait_for("count-dropped#").await;
    assert!(broker.position("kill").is_none(), "killed before routing moved: {:?}", broker.log());
    shared.signal_routed(0);
    let done = wait_event(&mut events, EventKind::PlanDone).await;
    assert_eq!(done.killed, Some(killed_by_selector(0) + killed_by_selector(1)), "{done:?}");
    let log = broker.log();
    assert!(broker.position("count-dropped#").unwrap() < broker.position("kill:2#").unwrap());
    assert!(broker.position("count-answered").is_none(), "{log:?}");
    // While the plan was pending, the refresher started nothing else.
    assert_eq!(broker.count_of("count:6"), 1, "{log:?}");
    assert!(shared.states().get().counted_at.is_none(), "an abandoned count is no figure");
    // The plan-done event says how long the broker took, beside decision_to_kill_ms.
    assert!(field(&done, "broker_ms").is_some() && field(&done, "decision_to_kill_ms").is_some());
}

/// With routing confirmed at once, the kill reaches the broker while the refresher's count
/// would still be running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_never_waits_for_the_refreshers_count() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let shared = engine(&broker, "auto", Confirm::Delay);
    let (_, mut events) = shared.bus().subscribe_with_backlog();
    tokio::spawn(statecull_engine::states::run(Arc::clone(&shared)));
    broker.wait_for("count:6#").await;
    shared.force(0, false);
    wait_event(&mut events, EventKind::PlanDone).await;
    assert!(broker.position("count-answered").is_none(), "{:?}", broker.log());
    assert_eq!(broker.count_of("kill:2"), 1, "{:?}", broker.log());
}

/// WAN1 and WAN2 go down together: one kill for both (four selectors), no Count before
/// it, and each gateway is credited from the broker's per-selector counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_covering_several_gateways_sends_no_count_and_credits_each() {
    let broker = FakeBroker::start(Behaviour::default());
    let shared = engine(&broker, "off", Confirm::Delay);
    let (_, mut events) = shared.bus().subscribe_with_backlog();
    shared.force(0, false);
    shared.force(1, false);
    let done = wait_event(&mut events, EventKind::PlanDone).await;
    let log = broker.log();
    assert_eq!(broker.count_of("kill:4"), 1, "one kill for both gateways: {log:?}");
    assert!(!log.iter().any(|e| e.starts_with("count")), "a count was sent: {log:?}");
    // Selectors in plan order, two per gateway: WAN1 owns the first two.
    let wan1 = killed_by_selector(0) + killed_by_selector(1);
    let wan2 = killed_by_selector(2) + killed_by_selector(3);
    assert_eq!(done.killed, Some(wan1 + wan2), "{done:?}");
    assert_eq!(field(&done, "killed_WAN1"), Some(wan1.to_string().as_str()), "{done:?}");
    assert_eq!(field(&done, "killed_WAN2"), Some(wan2.to_string().as_str()), "{done:?}");
    let facts = shared.gateway_facts();
    assert_eq!([facts[0].kills_total, facts[1].kills_total, facts[2].kills_total], [wan1, wan2, 0]);
}

/// `status` answers from the last figure, with its age, without a single request to the
/// broker: before any count, and while a count is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_without_asking_the_broker() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let shared = engine(&broker, "auto", Confirm::Delay);
    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = serve_control(&shared, &dir);

    let ControlReply::Status(st) = ask_line(&path, "\"status\"").await else { panic!("status") };
    assert_eq!(broker.connections(), 0, "status reached the broker: {:?}", broker.log());
    let refresh = st.states_refresh.unwrap();
    assert!(refresh.enabled && refresh.age_ms.is_none(), "{refresh:?}");
    assert!(st.gateways.iter().all(|g| g.states.is_none() && g.states_age_ms.is_none()));

    // A figure from a count that finished, then a count that hangs: status shows the figure.
    let counted_at = tokio::time::Instant::now();
    shared.states().counted(
        vec![Some(12_345), Some(7), None],
        counted_at,
        Duration::from_millis(1200),
    );
    let link = Arc::clone(&shared.broker);
    let hanging = tokio::spawn(async move { link.call_background(|c| c.count(vec![])).await });
    broker.wait_for("count:0#").await;
    let before = broker.log();
    let ControlReply::Status(st) = ask_line(&path, "\"status\"").await else { panic!("status") };
    assert_eq!(broker.log(), before, "status asked the broker");
    assert!(broker.position("count-answered").is_none());
    let states: Vec<_> = st.gateways.iter().map(|g| g.states).collect();
    assert_eq!(states, [Some(12_345), Some(7), None]);
    let age = st.gateways[0].states_age_ms.unwrap();
    assert!(age < 10_000, "{age}");
    assert_eq!(st.states_refresh.unwrap().last_count_ms, Some(1200));
    hanging.abort();
}

/// `statecull plan` counts on the background lane: a decision arriving while its count is
/// in flight abandons it at once (well before the dry run's own 3 s timeout would), the
/// dry run reports the counts unknown, and the kill goes out after routing moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_count_yields_to_a_decision() {
    let broker = FakeBroker::start(Behaviour { count_delay: SLOW, ..Behaviour::default() });
    let shared = engine(&broker, "off", Confirm::Signal);
    let (_, mut events) = shared.bus().subscribe_with_backlog();
    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = serve_control(&shared, &dir);
    let dry_run = {
        let path = path.clone();
        tokio::spawn(async move { ask_line(&path, r#"{"plan":{"down":["WAN2"]}}"#).await })
    };
    broker.wait_for("count:2#").await;
    shared.force(0, false);
    broker.wait_within("count-dropped#", Duration::from_millis(1500)).await;
    let ControlReply::Plan(plan) = dry_run.await.unwrap() else { panic!("plan") };
    assert!(!plan.counted, "{plan:?}");
    assert!(broker.position("kill").is_none(), "{:?}", broker.log());
    shared.signal_routed(0);
    wait_event(&mut events, EventKind::PlanDone).await;
    assert!(broker.position("count-answered").is_none(), "{:?}", broker.log());
    assert_eq!(broker.count_of("kill:2"), 1, "{:?}", broker.log());
}

/// The refresher keeps to its budget: with a 1 s minimum and a count the broker says took
/// 50 ms, the next count is 5 s later; status shows the figure, its age and when the next
/// is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresher_counts_within_its_budget() {
    let broker = FakeBroker::start(Behaviour { count_elapsed_us: 50_000, ..Behaviour::default() });
    let shared = engine(&broker, "1s", Confirm::Delay);
    tokio::spawn(statecull_engine::states::run(Arc::clone(&shared)));
    broker.wait_for("count-answered#").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(broker.count_of("count:6"), 1, "{:?}", broker.log());
    let figure = shared.states().get();
    assert_eq!(figure.per_gateway, [Some(2), Some(2), Some(2)]);
    let took = figure.took.unwrap();
    assert!(took >= Duration::from_millis(50), "{took:?}");
    let gap = figure.next_at.unwrap() - figure.counted_at.unwrap();
    assert!(gap >= took * 100 && gap <= took * 100 + Duration::from_millis(1), "{gap:?} {took:?}");

    let dir = TempDir::with_mode("ctl", 0o750).unwrap();
    let path = serve_control(&shared, &dir);
    let ControlReply::Status(st) = ask_line(&path, "\"status\"").await else { panic!("status") };
    let r = st.states_refresh.unwrap();
    assert_eq!(r.setting, "1s");
    assert!(r.age_ms.unwrap() >= 2000, "{r:?}");
    assert!(r.next_in_ms.unwrap() <= 3000, "{r:?}");
    assert_eq!(st.gateways[1].states, Some(2));
}
