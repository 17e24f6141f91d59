//! Trigger levels in the engine (issue 13): a dpinger report of high latency degrades WAN1;
//! in a group with `trigger = "latency"` that fails it (one kill, and its return is a
//! recovery), in a `down` group it does not. Against the in-process fake broker (`common`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, CONFIRM_DELAY_50MS, FakeBroker, TwoWans, field};
use statecull_control::{Event, EventKind};
use statecull_engine::state::Shared;

/// The two WANs (`common::TwoWans`), WAN1 judged by dpinger (no hold-down, one sample
/// enough), routing confirmed after 50 ms, the group's `trigger` as given and fail-back
/// killing; the engine's shared state and executor.
fn engine(broker: &FakeBroker, trigger: &str) -> Arc<Shared> {
    let policy = TwoWans {
        routing: CONFIRM_DELAY_50MS,
        wan1: "health_source = \"dpinger\"\n\
               dpinger_socket = \"/nonexistent/dpinger_WAN1.sock\"\n\
               hold_down = \"0s\"\n\
               min_samples = 1",
        wan1_states: r#"rt_addr = "198.51.100.254""#,
        group: &format!("on_recovery = \"kill\"\ntrigger = \"{trigger}\"\n"),
    };
    common::engine(broker, &policy.policy())
}

fn find(events: &[Event], kind: EventKind) -> Option<&Event> {
    events.iter().find(|e| e.kind == kind)
}

/// Slow (800 ms, the default latency_degraded is 500 ms) for a while, then fast again.
async fn slow_then_fast(shared: &Shared) {
    for _ in 0..5 {
        shared.record_summary(0, 0.0, Some(Duration::from_millis(800)));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    shared.record_summary(0, 0.0, Some(Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_group_kills_a_slow_member_once_and_fails_back() {
    let broker = FakeBroker::start(Behaviour::default());
    let shared = engine(&broker, "latency");
    slow_then_fast(&shared).await;
    let events = shared.bus().backlog();
    let degraded = find(&events, EventKind::GatewayDegraded).expect("a degraded event");
    assert_eq!(field(degraded, "judged"), Some("degraded by latency"), "{degraded:?}");
    assert_eq!(field(degraded, "usable"), Some("false"), "{degraded:?}");
    assert_eq!(
        field(degraded, "failed_by_trigger"),
        Some("failover (trigger = latency)"),
        "{degraded:?}"
    );
    // One kill of WAN1's states, then one fail-back kill of WAN2's when WAN1 is fast again.
    assert_eq!(broker.kills(), 2, "{:?}", broker.log());
    let plans: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::PlanDone).collect();
    assert_eq!(plans.len(), 2, "{events:#?}");
    assert!(shared.usable()[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_group_keeps_a_slow_member() {
    let broker = FakeBroker::start(Behaviour::default());
    let shared = engine(&broker, "down");
    slow_then_fast(&shared).await;
    let events = shared.bus().backlog();
    let degraded = find(&events, EventKind::GatewayDegraded).expect("a degraded event");
    assert_eq!(field(degraded, "usable"), Some("true"), "{degraded:?}");
    assert_eq!(field(degraded, "failed_by_trigger"), None, "{degraded:?}");
    assert_eq!(broker.kills(), 0, "{:?}", broker.log());
    assert!(find(&events, EventKind::PlanStarted).is_none(), "{events:#?}");
}
