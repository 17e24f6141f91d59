//! Replies stay readable across versions: a `status` reply from an engine that predates a
//! field still parses (the field takes its default), and a current reply round-trips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use statecull_control::{ControlReply, StatesRefreshStatus};

/// A `status` reply as an engine before the states figure's age wrote it.
const OLD_STATUS: &str = r#"{"status":{"engine_version":"0.1.0","policy":"/etc/statecull/policy.toml","uptime_s":12.5,"broker":{"socket":"/run/statecull/broker.sock","connected":true,"backend":"conntrack on 6.18","pending_plans":0,"last_error":null},"gateways":[{"name":"WAN1","interface":"eth1","address":"198.51.100.254","health_source":"icmp","state":"up","suppressed":false,"forced":false,"since_ms":1000,"last_reason":null,"loss_pct":0.0,"latency_ms":1.5,"samples":20,"flap_penalty":0.0,"states":12345}],"recent_events":[]}}"#;

#[test]
fn an_old_status_reply_still_parses_without_the_age() {
    let ControlReply::Status(st) = serde_json::from_str::<ControlReply>(OLD_STATUS).unwrap() else {
        panic!("a status reply")
    };
    assert_eq!(st.states_refresh, None);
    assert_eq!(st.gateways[0].states, Some(12345));
    assert_eq!(st.gateways[0].states_age_ms, None);
}

#[test]
fn a_current_status_reply_round_trips_with_the_age() {
    let ControlReply::Status(mut st) = serde_json::from_str::<ControlReply>(OLD_STATUS).unwrap()
    else {
        panic!("a status reply")
    };
    st.gateways[0].states_age_ms = Some(180_000);
    st.states_refresh = Some(StatesRefreshStatus {
        setting: "auto".into(),
        enabled: true,
        age_ms: Some(180_000),
        last_count_ms: Some(1200),
        next_in_ms: Some(60_000),
    });
    let line = serde_json::to_string(&ControlReply::Status(st.clone())).unwrap();
    assert!(line.contains("\"states_age_ms\":180000"), "{line}");
    assert_eq!(serde_json::from_str::<ControlReply>(&line).unwrap(), ControlReply::Status(st));
}
