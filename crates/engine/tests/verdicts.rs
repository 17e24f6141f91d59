//! External verdicts are debounced (issue 13): a hook flapping `statecull gateway WAN1
//! down|up` through the control socket, against an in-process fake broker (`common`) with
//! the executor and the engine's timer running, causes one kill for the whole flapping, and
//! every held `up` says which rule held it. A single clean down/up still acts at once and
//! comes back after the hold-down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, CONFIRM_DELAY_50MS, FakeBroker, TwoWans, verdict};
use statecull_control::{Event, EventKind, GatewayAction};
use statecull_engine::state::Shared;
use statecull_testkit::TempDir;

/// The two WANs (`common::TwoWans`), external health, routing confirmed after 50 ms;
/// WAN1's `hold_down` as given (damping: the defaults), recognised by its route.
fn policy(hold_down: &str) -> String {
    TwoWans {
        routing: CONFIRM_DELAY_50MS,
        wan1: &format!("health_source = \"external\"\nhold_down = \"{hold_down}\""),
        wan1_states: r#"rt_addr = "198.51.100.254""#,
        group: "",
    }
    .policy()
}

/// The engine's shared state, executor, timer (as the daemon ticks) and control socket.
fn engine(broker: &FakeBroker, dir: &TempDir, hold_down: &str) -> (Arc<Shared>, PathBuf) {
    let shared = common::engine(broker, &policy(hold_down));
    common::run_timer(&shared);
    let path = common::serve_control(&shared, dir);
    (shared, path)
}

/// Every event from now on, kept (the bus's backlog keeps only the last 64).
fn collect(shared: &Shared) -> Arc<std::sync::Mutex<Vec<Event>>> {
    let all = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_, mut rx) = shared.bus().subscribe_with_backlog();
    let keep = Arc::clone(&all);
    tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            keep.lock().unwrap().push(e);
        }
    });
    all
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

/// Forty down/up flaps, 25 ms apart, with the default hold-down (10 s) and damping: the
/// first down is killed at once (after the routing wait), then nothing, however long the
/// hook flaps; the gateway stays down and every `up` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_hook_kills_once() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-verdicts").unwrap();
    let (shared, path) = engine(&broker, &dir, "10s");
    let all = collect(&shared);
    let mut last_up = String::new();
    for i in 0..40 {
        let down = verdict(&path, "WAN1", GatewayAction::Down).await;
        if i == 0 {
            assert!(down.contains("external down: down at once"), "{down}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        last_up = verdict(&path, "WAN1", GatewayAction::Up).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Let any plan that was wrongly decided run.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.kills(), 1, "one kill for the whole flapping: {:?}", broker.log());
    let events = all.lock().unwrap().clone();
    assert_eq!(of_kind(&events, EventKind::PlanDone).len(), 1, "{events:#?}");
    assert_eq!(of_kind(&events, EventKind::GatewayDown).len(), 1, "{events:#?}");
    assert!(of_kind(&events, EventKind::GatewayUp).is_empty(), "{events:#?}");
    assert!(!shared.usable()[0]);
    // After 40 flaps damping holds it, and the answer says so (and the hold-down too).
    assert!(last_up.starts_with("WAN1 stays down for now (up verdict held: "), "{last_up}");
    assert!(last_up.contains("flap damping suppresses it"), "{last_up}");
    assert!(last_up.contains("hold-down 10 s"), "{last_up}");
    let held = of_kind(&events, EventKind::VerdictHeld);
    assert!(!held.is_empty(), "held ups are events: {events:#?}");
    assert_eq!(held[0].gateway.as_deref(), Some("WAN1"));
}

/// Without the hold-down (0 s), damping alone: a fast hook is killed three times, then
/// suppressed (the third down's penalty is above 2000), and never again while it flaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damping_alone_stops_a_flapping_hook_at_the_third_flap() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-verdicts-damping").unwrap();
    let (shared, path) = engine(&broker, &dir, "0s");
    for _ in 0..20 {
        verdict(&path, "WAN1", GatewayAction::Down).await;
        // Past the 50 ms routing wait, so that each kill that is decided runs.
        tokio::time::sleep(Duration::from_millis(150)).await;
        verdict(&path, "WAN1", GatewayAction::Up).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.kills(), 3, "{:?}", broker.log());
    assert!(!shared.usable()[0]);
}

/// One clean down/up: the down is killed at once; the up comes back after the hold-down
/// (300 ms here), with the rule in the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_down_up_acts_at_once_and_returns_after_the_hold_down() {
    let broker = FakeBroker::start(Behaviour::default());
    let dir = TempDir::new("engine-verdicts-clean").unwrap();
    let (shared, path) = engine(&broker, &dir, "300ms");
    let (_, mut rx) = shared.bus().subscribe_with_backlog();
    verdict(&path, "WAN1", GatewayAction::Down).await;
    broker.wait_for("kill").await;
    let up = verdict(&path, "WAN1", GatewayAction::Up).await;
    assert!(up.contains("hold-down 300 ms"), "{up}");
    let back = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = rx.recv().await.unwrap();
            if e.kind == EventKind::GatewayUp {
                return e;
            }
        }
    })
    .await
    .expect("WAN1 back after its hold-down");
    assert!(back.message.contains("the external up stood for"), "{back:?}");
    assert!(shared.usable()[0]);
    assert_eq!(broker.kills(), 1, "{:?}", broker.log());
}
