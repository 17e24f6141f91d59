//! The planner's rules, one test (or more) per rule, and a property test over random
//! policies and health. Policies are built directly in Rust, not loaded from TOML.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use statecull_policy::PolicyError;
use statecull_policy::health::Judgement;
use statecull_policy::model::{
    EngineSettings, FlapDamping, Gateway, Group, GroupMember, HealthParams, HealthSource, OnDown,
    OnRecovery, Policy, ProtectedFlow, Routing, RoutingConfirm, StateMatch, Trigger,
};
use statecull_policy::plan::{
    Action, MAX_SELECTORS_PER_REQUEST, OwnedSelectors, Plan, PlanInput, Purpose, attribute,
    describe_selector, flow_matches, gateway_selectors, owned_selectors, per_gateway, plan,
    resolve_except,
};
use statecull_proto::{
    AddressFamily, Capabilities, IfName, L4, MarkMatch, PfDirection, PortRange, Prefix, Selector,
    SelectorField, StateDetail, StateHandle, StateKey, StateRecord, ipproto,
};

// ---------------------------------------------------------------------------------------
// Builders

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ct_caps() -> Capabilities {
    use SelectorField::*;
    Capabilities {
        selector_fields: vec![Family, Proto, Src, Dst, SrcPort, DstPort, Mark, NatAddr],
        kernel_mark_flush: true,
        kernel_tuple_flush: vec![AddressFamily::Ipv4],
        kernel_tuple_broken: vec![AddressFamily::Ipv6],
        listing_only: vec![],
        match_opposite: false,
        flush_by_interface: false,
        ruleset_ticket: false,
    }
}

fn pf_caps() -> Capabilities {
    use SelectorField::*;
    Capabilities {
        selector_fields: vec![
            Family, Proto, Src, Dst, SrcPort, DstPort, Mark, NatAddr, Gateway, Interface, Label,
        ],
        kernel_mark_flush: false,
        kernel_tuple_flush: vec![AddressFamily::Ipv4, AddressFamily::Ipv6],
        kernel_tuple_broken: vec![],
        listing_only: vec![NatAddr],
        match_opposite: true,
        flush_by_interface: true,
        ruleset_ticket: true,
    }
}

fn health() -> HealthParams {
    HealthParams {
        window: 10,
        min_samples: 5,
        loss_down_pct: 50.0,
        loss_up_pct: 10.0,
        latency_degraded: Duration::from_millis(500),
        latency_up: Duration::from_millis(200),
        loss_degraded_pct: 20.0,
        hold_down: Duration::from_secs(30),
        damping: FlapDamping {
            enabled: false,
            penalty: 1000.0,
            suppress_above: 2000.0,
            reuse_below: 750.0,
            half_life: Duration::from_secs(900),
            max_penalty: 8000.0,
        },
    }
}

/// Gateway number `n` (1-based in names and addresses): WAN<n>, next hop 192.0.2.<n>, ct
/// mark <n>/0xff, NAT address 198.51.100.<n> on igb<n>.
fn gw(n: u8) -> Gateway {
    gw_with(
        n,
        StateMatch {
            rt_addr: Some(ip(&format!("192.0.2.{n}"))),
            mark: Some(MarkMatch { value: u32::from(n), mask: 0xff }),
            nat_addr: vec![ip(&format!("198.51.100.{n}"))],
            nat_from_interface: false,
            interface: Some(IfName(format!("igb{n}"))),
        },
    )
}

fn gw_with(n: u8, states: StateMatch) -> Gateway {
    Gateway {
        name: format!("WAN{n}"),
        interface: IfName(format!("igb{n}")),
        address: ip(&format!("192.0.2.{n}")),
        family: AddressFamily::Ipv4,
        monitor: vec![ip(&format!("192.0.2.{n}"))],
        probe_source: None,
        fib: None,
        source: HealthSource::Icmp,
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(2),
        health: health(),
        states,
    }
}

fn group(name: &str, members: &[(usize, u8)], on_down: OnDown, on_recovery: OnRecovery) -> Group {
    let mut members: Vec<GroupMember> =
        members.iter().map(|&(gateway, tier)| GroupMember { gateway, tier }).collect();
    members.sort_by_key(|m| m.tier);
    Group { name: name.into(), members, on_down, on_recovery, trigger: Trigger::Down }
}

fn policy(gateways: Vec<Gateway>, groups: Vec<Group>) -> Policy {
    Policy {
        source: "<test>".into(),
        engine: EngineSettings {
            broker_socket: None,
            control_socket: None,
            metrics_listen: None,
            readable_paths: vec![],
            states_refresh: Default::default(),
        },
        gateways,
        groups,
        protected: vec![],
        routing: Routing {
            confirm: RoutingConfirm::Delay,
            settle_timeout: Duration::from_secs(5),
            sweep_delay: Duration::from_secs(3),
        },
    }
}

fn sip() -> ProtectedFlow {
    ProtectedFlow {
        name: "sip".into(),
        proto: Some(ipproto::UDP),
        ports: vec![PortRange::single(5060)],
        prefixes: vec![],
    }
}

fn rtp() -> ProtectedFlow {
    ProtectedFlow {
        name: "rtp".into(),
        proto: Some(ipproto::UDP),
        ports: vec![PortRange { first: 10000, last: 20000 }],
        prefixes: vec!["10.0.0.0/24".parse().unwrap()],
    }
}

/// Two gateways, WAN1 tier 1 and WAN2 tier 2, in group "main".
fn two_wan(on_down: OnDown, on_recovery: OnRecovery) -> Policy {
    policy(vec![gw(1), gw(2)], vec![group("main", &[(0, 1), (1, 2)], on_down, on_recovery)])
}

/// Three gateways in one group with tiers 1, 2, 3.
fn three_tier(on_down: OnDown, on_recovery: OnRecovery) -> Policy {
    policy(
        vec![gw(1), gw(2), gw(3)],
        vec![group("main", &[(0, 1), (1, 2), (2, 3)], on_down, on_recovery)],
    )
}

fn run(
    p: &Policy,
    usable: &[bool],
    went_down: &[usize],
    came_up: &[usize],
    caps: &Capabilities,
) -> Plan {
    plan(&PlanInput { policy: p, usable, went_down, came_up, caps }).unwrap()
}

fn mark(n: u32) -> Selector {
    Selector { mark: Some(MarkMatch { value: n, mask: 0xff }), ..Selector::default() }
}

fn rt(n: u8) -> Selector {
    Selector { gateway: Some(ip(&format!("192.0.2.{n}"))), ..Selector::default() }
}

fn nat_on(n: u8) -> Selector {
    Selector {
        nat_addr: Some(ip(&format!("198.51.100.{n}"))),
        interface: Some(IfName(format!("igb{n}"))),
        ..Selector::default()
    }
}

fn kill(selectors: Vec<Selector>, match_opposite: bool) -> Action {
    Action::KillMatching { selectors, match_opposite }
}

fn down(names: &[&str]) -> Purpose {
    Purpose::GatewayDown { gateways: names.iter().map(|s| s.to_string()).collect() }
}

/// A step's gateways and its selectors' owners (policy indices).
fn owned(p: &Plan, step: usize) -> (Vec<usize>, Vec<usize>) {
    (p.steps[step].gateways.clone(), p.steps[step].owners.clone())
}

fn skipped_subjects(p: &Plan) -> Vec<&str> {
    p.skipped.iter().map(|s| s.subject.as_str()).collect()
}

fn skip_reason<'a>(p: &'a Plan, subject: &str) -> &'a str {
    &p.skipped.iter().find(|s| s.subject == subject).unwrap().reason
}

// ---------------------------------------------------------------------------------------
// Rule 7: selectors per gateway

#[test]
fn conntrack_uses_the_mark_when_set() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    assert_eq!(gateway_selectors(&p, 0, &ct_caps()).unwrap(), vec![mark(1)]);
}

#[test]
fn conntrack_without_mark_uses_one_selector_per_nat_address() {
    let p = policy(
        vec![gw_with(
            1,
            StateMatch {
                nat_addr: vec![ip("198.51.100.1"), ip("2001:db8::1")],
                interface: Some(IfName("igb1".into())),
                ..StateMatch::default()
            },
        )],
        vec![],
    );
    let sels = gateway_selectors(&p, 0, &ct_caps()).unwrap();
    assert_eq!(
        sels,
        vec![
            Selector { nat_addr: Some(ip("198.51.100.1")), ..Selector::default() },
            Selector { nat_addr: Some(ip("2001:db8::1")), ..Selector::default() },
        ],
        "conntrack has no interface field: NAT selectors go without it"
    );
}

#[test]
fn pf_uses_rt_addr_and_interface_plus_nat_address() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    assert_eq!(gateway_selectors(&p, 1, &pf_caps()).unwrap(), vec![rt(2), nat_on(2)]);
}

#[test]
fn pf_nat_address_without_interface_goes_alone() {
    let p = policy(
        vec![gw_with(
            1,
            StateMatch { nat_addr: vec![ip("198.51.100.1")], ..StateMatch::default() },
        )],
        vec![],
    );
    assert_eq!(
        gateway_selectors(&p, 0, &pf_caps()).unwrap(),
        vec![Selector { nat_addr: Some(ip("198.51.100.1")), ..Selector::default() }]
    );
}

#[test]
fn pf_interface_restriction_is_required_when_configured() {
    let mut caps = pf_caps();
    caps.selector_fields.retain(|f| *f != SelectorField::Interface);
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    assert_eq!(gateway_selectors(&p, 0, &caps).unwrap(), vec![rt(1)]);
}

#[test]
fn every_built_selector_passes_check() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    for caps in [ct_caps(), pf_caps()] {
        for g in 0..2 {
            for s in gateway_selectors(&p, g, &caps).unwrap() {
                s.check().unwrap();
            }
        }
    }
}

#[test]
fn unrecognisable_gateways_name_what_the_policy_offers_and_the_backend_supports() {
    let only_rt = policy(
        vec![gw_with(1, StateMatch { rt_addr: Some(ip("192.0.2.1")), ..StateMatch::default() })],
        vec![],
    );
    let err = gateway_selectors(&only_rt, 0, &ct_caps()).unwrap_err();
    let PolicyError::Unrecognisable { gateway, message } = &err else { panic!("{err:?}") };
    assert_eq!(gateway, "WAN1");
    assert!(message.contains("rt_addr 192.0.2.1"), "{message}");
    assert!(message.contains("family, proto, src, dst, sport, dport, mark, nat-addr"), "{message}");
    assert!(message.contains("conntrack-style"), "{message}");

    let mut caps = pf_caps();
    caps.selector_fields.retain(|f| *f != SelectorField::Mark);
    let only_mark = policy(
        vec![gw_with(
            1,
            StateMatch { mark: Some(MarkMatch { value: 1, mask: 0xff }), ..StateMatch::default() },
        )],
        vec![],
    );
    let err = gateway_selectors(&only_mark, 0, &caps).unwrap_err();
    let PolicyError::Unrecognisable { message, .. } = &err else { panic!("{err:?}") };
    assert!(message.contains("mark 0x1/0xff"), "{message}");
    assert!(message.contains("pf-style"), "{message}");

    let nothing = policy(vec![gw_with(1, StateMatch::default())], vec![]);
    let err = gateway_selectors(&nothing, 0, &pf_caps()).unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");

    // pf with an interface restriction the backend cannot express, and no rt_addr.
    let mut caps = pf_caps();
    caps.selector_fields.retain(|f| *f != SelectorField::Interface);
    let nat_on_if = policy(
        vec![gw_with(
            1,
            StateMatch {
                nat_addr: vec![ip("198.51.100.1")],
                interface: Some(IfName("igb1".into())),
                ..StateMatch::default()
            },
        )],
        vec![],
    );
    let err = gateway_selectors(&nat_on_if, 0, &caps).unwrap_err();
    assert!(err.to_string().contains("needs interface"), "{err}");
}

#[test]
fn invalid_configured_values_are_errors_not_silent_partial_kills() {
    let bad_mark = policy(
        vec![gw_with(
            1,
            StateMatch {
                mark: Some(MarkMatch { value: 0x100, mask: 0xff }),
                ..StateMatch::default()
            },
        )],
        vec![],
    );
    let err = gateway_selectors(&bad_mark, 0, &ct_caps()).unwrap_err();
    assert!(matches!(err, PolicyError::Unrecognisable { .. }), "{err:?}");
    assert!(err.to_string().contains("not a valid selector"), "{err}");

    let bad_nat = policy(
        vec![gw_with(
            1,
            StateMatch {
                rt_addr: Some(ip("192.0.2.1")),
                nat_addr: vec![ip("0.0.0.0")],
                ..StateMatch::default()
            },
        )],
        vec![],
    );
    let err = gateway_selectors(&bad_nat, 0, &pf_caps()).unwrap_err();
    assert!(err.to_string().contains("not a unicast address"), "{err}");
}

#[test]
fn gateway_selectors_unknown_index() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    let err = gateway_selectors(&p, 7, &ct_caps()).unwrap_err();
    let PolicyError::UnknownGateway(name, known) = &err else { panic!("{err:?}") };
    assert_eq!(name, "#7");
    assert_eq!(known, "WAN1, WAN2");
}

#[test]
fn describe_selector_forms() {
    assert_eq!(describe_selector(&mark(1)), "ct mark 0x1/0xff");
    assert_eq!(describe_selector(&rt(1)), "route-to 192.0.2.1");
    assert_eq!(describe_selector(&nat_on(1)), "NAT 198.51.100.1 on igb1");
    let nat = Selector { nat_addr: Some(ip("198.51.100.1")), ..Selector::default() };
    assert_eq!(describe_selector(&nat), "NAT address 198.51.100.1");
    let other = Selector { proto: Some(6), ..mark(1) };
    assert_eq!(describe_selector(&other), "proto tcp mark 0x1/0xff");
}

// ---------------------------------------------------------------------------------------
// Rules 1, 5, 9: one gateway down

#[test]
fn one_gateway_down_on_conntrack() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].purpose, down(&["WAN1"]));
    assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
    assert!(plan.skipped.is_empty());
    assert_eq!(owned(&plan, 0), (vec![0], vec![0]), "WAN1's step, WAN1's mark");
    assert_eq!(
        plan.explanation[0],
        "WAN1 down: kill WAN1's states (ct mark 0x1/0xff) once routing has moved; WAN2 (tier 2) \
         takes over"
    );
    assert!(plan.explanation[1].starts_with("1. kill-matching: WAN1 went down; group main"));
    assert!(!plan.is_empty());
}

#[test]
fn one_gateway_down_on_pf_kills_twins_and_default_route_states() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[true, false], &[1], &[], &pf_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, kill(vec![rt(2), nat_on(2)], true));
    assert_eq!(
        plan.explanation[0],
        "WAN2 down: kill WAN2's states (route-to 192.0.2.2 or NAT 198.51.100.2 on igb2) once \
         routing has moved; WAN1 (tier 1) takes over"
    );
    assert_eq!(owned(&plan, 0), (vec![1], vec![1, 1]));
    assert!(plan.steps[0].why.contains("twin"), "{}", plan.steps[0].why);
}

#[test]
fn match_opposite_follows_the_backend() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    for (caps, expected) in [(ct_caps(), false), (pf_caps(), true)] {
        let down_plan = run(&p, &[false, true], &[0], &[], &caps);
        let up_plan = run(&p, &[true, true], &[], &[0], &caps);
        for step in down_plan.steps.iter().chain(&up_plan.steps) {
            let Action::KillMatching { match_opposite, .. } = step.action else { panic!() };
            assert_eq!(match_opposite, expected);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rule 4: simultaneous failures

#[test]
fn two_of_three_down_is_one_step_and_one_request() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[false, false, true], &[0, 1], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1, "{plan:#?}");
    assert_eq!(plan.steps[0].purpose, down(&["WAN1", "WAN2"]));
    assert_eq!(plan.steps[0].action, kill(vec![mark(1), mark(2)], false));
    assert!(
        plan.steps[0].why.contains("in one request: the broker picks one path for all of them"),
        "{}",
        plan.steps[0].why
    );
    assert_eq!(owned(&plan, 0), (vec![0, 1], vec![0, 1]), "each mark credited to its gateway");
    assert_eq!(
        plan.explanation[0],
        "WAN1 and WAN2 down: kill their states (WAN1: ct mark 0x1/0xff, WAN2: ct mark 0x2/0xff) \
         in one pass once routing has moved; WAN3 (tier 3) takes over"
    );
}

#[test]
fn more_than_64_selectors_are_split_and_the_why_says_so() {
    // 203.0.113.1-70: none shared with WAN2 (198.51.100.2).
    let nats: Vec<IpAddr> = (1..=70u16).map(|i| ip(&format!("203.0.113.{i}"))).collect();
    let p = policy(
        vec![gw_with(1, StateMatch { nat_addr: nats, ..StateMatch::default() }), gw(2)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].action.selectors().len(), MAX_SELECTORS_PER_REQUEST);
    assert_eq!(plan.steps[1].action.selectors().len(), 70 - MAX_SELECTORS_PER_REQUEST);
    assert!(plan.steps[0].why.contains("request 1 of 2"), "{}", plan.steps[0].why);
    assert!(plan.steps[1].why.contains("request 2 of 2"), "{}", plan.steps[1].why);
    assert!(plan.steps[0].why.contains("at most 64"));
    assert!(plan.explanation[0].contains("in 2 passes"), "{}", plan.explanation[0]);
    for step in &plan.steps {
        assert_eq!(step.purpose, down(&["WAN1"]));
    }
    let Some(Action::KillMatching { selectors, .. }) = plan.sweep() else { panic!() };
    assert_eq!(selectors.len(), 70);
    let sweeps = plan.sweep_actions();
    assert_eq!(sweeps.len(), 2);
    assert_eq!(sweeps[0], plan.steps[0].action);
    assert_eq!(sweeps[1], plan.steps[1].action);
    assert_eq!(owned(&plan, 0), (vec![0], vec![0; MAX_SELECTORS_PER_REQUEST]));
    assert_eq!(owned(&plan, 1), (vec![0], vec![0; 70 - MAX_SELECTORS_PER_REQUEST]));
    let requests = plan.sweep_requests();
    assert_eq!(requests.len(), 2);
    for (r, step) in requests.iter().zip(&plan.steps) {
        assert_eq!((&r.action, &r.owners), (&step.action, &step.owners));
    }
}

#[test]
fn a_nat_address_shared_by_two_down_gateways_is_sent_once() {
    let shared =
        |n| gw_with(n, StateMatch { nat_addr: vec![ip("198.51.100.9")], ..StateMatch::default() });
    let p = policy(
        vec![shared(1), shared(2), gw(3)],
        vec![group("main", &[(0, 1), (1, 1), (2, 2)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, false, true], &[0, 1], &[], &ct_caps());
    assert_eq!(
        plan.steps[0].action,
        kill(vec![Selector { nat_addr: Some(ip("198.51.100.9")), ..Selector::default() }], false)
    );
    assert_eq!(owned(&plan, 0), (vec![0, 1], vec![0]), "sent once, credited to the first");
}

// ---------------------------------------------------------------------------------------
// Rule 2: nothing when nothing can take over

#[test]
fn all_members_down_at_once_kills_nothing() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    let plan = run(&p, &[false, false], &[0, 1], &[], &ct_caps());
    assert!(plan.is_empty());
    assert_eq!(skipped_subjects(&plan), ["WAN1", "WAN2"]);
    let reason = skip_reason(&plan, "WAN1");
    assert!(reason.contains("no member of group main is usable"), "{reason}");
    assert!(reason.contains("#9789"), "{reason}");
    assert!(plan.explanation[0].starts_with("WAN1 down: nothing killed, no member"));
    assert!(plan.sweep().is_none());
}

#[test]
fn last_usable_member_going_down_kills_nothing() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    let plan = run(&p, &[false, false, false], &[2], &[], &pf_caps());
    assert!(plan.is_empty());
    assert_eq!(skipped_subjects(&plan), ["WAN3"]);
}

#[test]
fn a_gateway_in_no_group_is_monitored_only() {
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[true, true, false], &[2], &[], &ct_caps());
    assert!(plan.is_empty());
    assert!(skip_reason(&plan, "WAN3").starts_with("monitored only"));
}

#[test]
fn a_usable_member_of_another_group_is_enough() {
    // WAN1 is alone in "solo" but also in "main" with WAN2.
    let p = policy(
        vec![gw(1), gw(2)],
        vec![
            group("solo", &[(0, 1)], OnDown::Gateway, OnRecovery::Keep),
            group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert!(plan.steps[0].why.contains("group main"), "{}", plan.steps[0].why);
    assert!(!plan.steps[0].why.contains("group solo"), "{}", plan.steps[0].why);
}

// ---------------------------------------------------------------------------------------
// Rule 3: on_down

#[test]
fn on_down_none_skips() {
    let p = two_wan(OnDown::None, OnRecovery::Keep);
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert!(plan.is_empty());
    assert_eq!(
        skip_reason(&plan, "WAN1"),
        "on_down = none in group main: its states are left to time out"
    );
}

#[test]
fn on_down_all_flushes_and_warns() {
    let p = two_wan(OnDown::All, OnRecovery::Keep);
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, Action::Flush);
    assert_eq!(plan.steps[0].purpose, Purpose::FlushAll { gateways: vec!["WAN1".into()] });
    assert_eq!(owned(&plan, 0), (vec![0], vec![]), "a flush has no selector to own");
    assert!(plan.steps[0].why.contains("WARNING"), "{}", plan.steps[0].why);
    assert!(plan.steps[0].why.contains("healthy links"), "{}", plan.steps[0].why);
    assert!(plan.explanation[0].contains("healthy links"), "{}", plan.explanation[0]);
    assert!(plan.sweep().is_none(), "no sweep after a flush");
}

#[test]
fn on_down_all_does_not_need_recognisable_states() {
    let p = policy(
        vec![gw_with(1, StateMatch::default()), gw(2)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::All, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps[0].action, Action::Flush);
}

#[test]
fn the_strongest_on_down_wins() {
    let groups = |a: OnDown, b: OnDown| {
        policy(
            vec![gw(1), gw(2), gw(3)],
            vec![
                group("a", &[(0, 1), (1, 2)], a, OnRecovery::Keep),
                group("b", &[(0, 1), (2, 2)], b, OnRecovery::Keep),
            ],
        )
    };
    let usable = [false, true, true];
    let p = groups(OnDown::None, OnDown::Gateway);
    assert_eq!(run(&p, &usable, &[0], &[], &ct_caps()).steps[0].action, kill(vec![mark(1)], false));
    let p = groups(OnDown::Gateway, OnDown::None);
    assert_eq!(run(&p, &usable, &[0], &[], &ct_caps()).steps[0].action, kill(vec![mark(1)], false));
    let p = groups(OnDown::Gateway, OnDown::All);
    assert_eq!(run(&p, &usable, &[0], &[], &ct_caps()).steps[0].action, Action::Flush);
    let p = groups(OnDown::None, OnDown::None);
    assert!(run(&p, &usable, &[0], &[], &ct_caps()).is_empty());
}

#[test]
fn a_group_without_usable_member_does_not_vote() {
    // Group "a" would flush but has nobody left; group "b" still has WAN3.
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("a", &[(0, 1), (1, 2)], OnDown::All, OnRecovery::Keep),
            group("b", &[(0, 1), (2, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    let plan = run(&p, &[false, false, true], &[0], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
}

#[test]
fn a_flush_covers_the_other_down_gateways() {
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("flushy", &[(0, 1), (2, 2)], OnDown::All, OnRecovery::Keep),
            group("careful", &[(1, 1), (2, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    let plan = run(&p, &[false, false, true], &[0, 1], &[], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, Action::Flush);
    assert_eq!(
        plan.steps[0].purpose,
        Purpose::FlushAll { gateways: vec!["WAN1".into(), "WAN2".into()] }
    );
    assert_eq!(owned(&plan, 0), (vec![0, 1], vec![]));
    assert!(plan.steps[0].why.contains("also covers WAN2"), "{}", plan.steps[0].why);
}

// ---------------------------------------------------------------------------------------
// Rule 6: fail-back

fn protected_policy(on_recovery: OnRecovery) -> Policy {
    let mut p = two_wan(OnDown::Gateway, on_recovery);
    p.protected = vec![sip(), rtp()];
    p
}

#[test]
fn fail_back_keep_is_skipped_with_the_reason() {
    let p = protected_policy(OnRecovery::Keep);
    let plan = run(&p, &[true, true], &[], &[0], &ct_caps());
    assert!(plan.is_empty());
    assert_eq!(skipped_subjects(&plan), ["main"]);
    let reason = skip_reason(&plan, "main");
    assert!(reason.starts_with("on_recovery = keep"), "{reason}");
    assert!(reason.contains("stay on WAN2"), "{reason}");
    assert_eq!(
        plan.explanation[0],
        "WAN1 back in group main: connections stay on WAN2 (on_recovery = keep)"
    );
}

#[test]
fn fail_back_kill_targets_the_lower_tier() {
    let p = protected_policy(OnRecovery::Kill);
    let plan = run(&p, &[true, true], &[], &[0], &pf_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].purpose,
        Purpose::FailBack {
            group: "main".into(),
            recovered: vec!["WAN1".into()],
            lower: vec!["WAN2".into()]
        }
    );
    assert_eq!(plan.steps[0].action, kill(vec![rt(2), nat_on(2)], true));
    assert!(plan.sweep().is_none(), "fail-back steps are not swept");
    assert_eq!(owned(&plan, 0), (vec![1], vec![1, 1]), "the lower tier's step");
    assert!(plan.sweep_requests().is_empty());
    assert_eq!(
        plan.explanation[0],
        "WAN1 back in group main: kill WAN2's states so connections move back to tier 1"
    );
}

#[test]
fn fail_back_kill_unprotected_spares_sip_and_rtp() {
    let p = protected_policy(OnRecovery::KillUnprotected);
    let plan = run(&p, &[true, true], &[], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].action,
        Action::KillExcept {
            selectors: vec![mark(2)],
            match_opposite: false,
            except: vec![sip(), rtp()]
        }
    );
    assert_eq!(owned(&plan, 0), (vec![1], vec![1]));
    assert!(plan.explanation[0].contains("except protected flows (sip and rtp)"));
    assert!(plan.steps[0].why.contains("one entry covers both directions"));
    // On pf the handles' twins go too, and the plan says so.
    let plan = run(&p, &[true, true], &[], &[0], &pf_caps());
    let Action::KillExcept { match_opposite, .. } = &plan.steps[0].action else {
        panic!("{:?}", plan.steps[0].action)
    };
    assert!(*match_opposite);
    assert!(
        plan.steps[0].why.contains("opposite-direction twin is killed"),
        "{}",
        plan.steps[0].why
    );
}

#[test]
fn fail_back_kill_unprotected_without_protected_flows_is_a_plain_kill() {
    let p = two_wan(OnDown::Gateway, OnRecovery::KillUnprotected);
    let plan = run(&p, &[true, true], &[], &[0], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    assert!(plan.steps[0].why.contains("protects no flow"), "{}", plan.steps[0].why);
}

#[test]
fn fail_back_leaves_down_lower_members_alone() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    // Before: WAN2 carried the traffic, WAN3 down long ago. Now WAN1 is back.
    let plan = run(&p, &[true, true, false], &[], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    let Purpose::FailBack { lower, .. } = &plan.steps[0].purpose else { panic!() };
    assert_eq!(lower, &["WAN2"]);
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
}

#[test]
fn fail_back_kills_every_usable_lower_tier() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    let plan = run(&p, &[true, true, true], &[], &[0], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(2), mark(3)], false));
    assert_eq!(owned(&plan, 0), (vec![1, 2], vec![1, 2]));
}

#[test]
fn no_fail_back_when_the_better_tier_was_already_up() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    // WAN2 comes back while WAN1 carries the traffic.
    let plan = run(&p, &[true, true, true], &[], &[1], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
    assert!(plan.explanation.iter().any(|l| l.contains("already the best usable tier")));
}

#[test]
fn an_equal_tier_peer_returning_is_no_fail_back() {
    // Load-balanced tier 1 (WAN1 up, WAN2 returning) over WAN3: traffic was on tier 1.
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![group("lb", &[(0, 1), (1, 1), (2, 2)], OnDown::Gateway, OnRecovery::Kill)],
    );
    let plan = run(&p, &[true, true, true], &[], &[1], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
}

#[test]
fn no_fail_back_when_a_middle_tier_returns_below_the_best() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    // WAN1 and WAN3 up, WAN2 comes back: WAN1 remains best, nothing to move.
    let plan = run(&p, &[true, true, true], &[], &[1], &pf_caps());
    assert!(plan.is_empty());
}

#[test]
fn middle_tier_recovering_moves_traffic_off_the_lowest() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    // WAN1 still down, WAN2 comes back above WAN3.
    let plan = run(&p, &[false, true, true], &[], &[1], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].purpose,
        Purpose::FailBack {
            group: "main".into(),
            recovered: vec!["WAN2".into()],
            lower: vec!["WAN3".into()]
        }
    );
}

#[test]
fn equal_tiers_recovering_together_fail_back_once() {
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![group("lb", &[(0, 1), (1, 1), (2, 2)], OnDown::Gateway, OnRecovery::Kill)],
    );
    let plan = run(&p, &[true, true, true], &[], &[0, 1], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        plan.steps[0].purpose,
        Purpose::FailBack {
            group: "lb".into(),
            recovered: vec!["WAN1".into(), "WAN2".into()],
            lower: vec!["WAN3".into()]
        }
    );
}

#[test]
fn fail_back_never_kills_the_best_tier_of_another_group() {
    // WAN2 is the backup of "a" but the primary of "b".
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("a", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill),
            group("b", &[(1, 1), (2, 2)], OnDown::Gateway, OnRecovery::Kill),
        ],
    );
    let plan = run(&p, &[true, true, true], &[], &[0], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
    let reason = skip_reason(&plan, "WAN2");
    assert!(reason.contains("best usable tier of group b"), "{reason}");
    assert!(skip_reason(&plan, "a").contains("no usable lower-tier member"));

    // When WAN2 is only b's backup (b's primary WAN3 is up), it is moved back.
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("a", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill),
            group("b", &[(2, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    let plan = run(&p, &[true, true, true], &[], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
}

#[test]
fn a_recovered_gateway_is_never_a_lower_tier_elsewhere() {
    // WAN1 recovers: tier 1 in "a" (over WAN2), tier 2 in "b" whose tier 1 (WAN3) also
    // recovers, over WAN4 (tier 3) that carried b's traffic.
    let p = policy(
        vec![gw(1), gw(2), gw(3), gw(4)],
        vec![
            group("a", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill),
            group("b", &[(2, 1), (0, 2), (3, 3)], OnDown::Gateway, OnRecovery::Kill),
        ],
    );
    let plan = run(&p, &[true, true, true, true], &[], &[0, 2], &ct_caps());
    for step in &plan.steps {
        assert!(!step.action.selectors().contains(&mark(1)), "{plan:#?}");
        assert!(!step.action.selectors().contains(&mark(3)), "{plan:#?}");
    }
    assert_eq!(plan.steps.len(), 2, "{plan:#?}");
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    assert_eq!(
        plan.steps[1].purpose,
        Purpose::FailBack {
            group: "b".into(),
            recovered: vec!["WAN3".into()],
            lower: vec!["WAN4".into()]
        }
    );
    assert_eq!(plan.steps[1].action, kill(vec![mark(4)], false));
    assert!(skip_reason(&plan, "WAN1").contains("best usable tier of group a"));
}

#[test]
fn down_steps_come_before_fail_back_steps() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Kill);
    // Before: WAN2 and WAN3 usable (traffic on WAN2). Now WAN1 is back and WAN2 died.
    let plan = run(&p, &[true, false, true], &[1], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 2, "{plan:#?}");
    assert_eq!(plan.steps[0].purpose, down(&["WAN2"]));
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    assert!(matches!(plan.steps[1].purpose, Purpose::FailBack { .. }));
    assert_eq!(plan.steps[1].action, kill(vec![mark(3)], false));
    assert_eq!(plan.sweep(), Some(kill(vec![mark(2)], false)));
    assert!(plan.explanation[0].starts_with("WAN2 down: kill WAN2's states"));
    assert!(plan.explanation[0].contains(". WAN1 back in group main: kill WAN3's states"));
}

#[test]
fn a_flush_makes_fail_back_unnecessary() {
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("a", &[(0, 1), (1, 2)], OnDown::All, OnRecovery::Keep),
            group("b", &[(2, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill),
        ],
    );
    // WAN1 down (flush), WAN3 back above WAN2.
    let plan = run(&p, &[false, true, true], &[0], &[2], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, Action::Flush);
    assert!(skip_reason(&plan, "b").contains("the flush already drops every state"));
}

#[test]
fn nothing_usable_before_means_nothing_to_move_back() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    // Both were down; both come back together.
    let plan = run(&p, &[true, true], &[], &[0, 1], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
    assert!(plan.explanation.iter().any(|l| l.contains("no member was usable before")));
}

// ---------------------------------------------------------------------------------------
// Trigger levels: what makes a member failed, per group

const UP: Judgement = Judgement::UP;
const DOWN: Judgement = Judgement::DOWN;
const LOSS: Judgement = Judgement { down: false, high_loss: true, high_latency: false };
const LATENCY: Judgement = Judgement { down: false, high_loss: false, high_latency: true };
const BOTH: Judgement = Judgement { down: false, high_loss: true, high_latency: true };

fn with_trigger(mut p: Policy, trigger: Trigger) -> Policy {
    for g in &mut p.groups {
        g.trigger = trigger;
    }
    p
}

/// As the engine decides: each gateway's usability from its judgement and its groups'
/// triggers (`Policy::usable`), before and after; those whose usability changed went down
/// or came up in this batch.
fn judged(p: &Policy, before: &[Judgement], after: &[Judgement], caps: &Capabilities) -> Plan {
    let was: Vec<bool> = before.iter().enumerate().map(|(g, j)| p.usable(g, *j)).collect();
    let is: Vec<bool> = after.iter().enumerate().map(|(g, j)| p.usable(g, *j)).collect();
    let went_down: Vec<usize> = (0..is.len()).filter(|&g| was[g] && !is[g]).collect();
    let came_up: Vec<usize> = (0..is.len()).filter(|&g| !was[g] && is[g]).collect();
    run(p, &is, &went_down, &came_up, caps)
}

#[test]
fn each_trigger_level_fails_a_member_on_exactly_its_judgements() {
    use Trigger::*;
    // (trigger, WAN1's judgement) -> WAN1's states killed (WAN2, tier 2, is up).
    let table = [
        (Down, DOWN, true),
        (Down, LOSS, false),
        (Down, LATENCY, false),
        (Down, BOTH, false),
        (Loss, DOWN, true),
        (Loss, LOSS, true),
        (Loss, LATENCY, false),
        (Loss, BOTH, true),
        (Latency, DOWN, true),
        (Latency, LOSS, false),
        (Latency, LATENCY, true),
        (Latency, BOTH, true),
        (LossOrLatency, DOWN, true),
        (LossOrLatency, LOSS, true),
        (LossOrLatency, LATENCY, true),
        (LossOrLatency, BOTH, true),
    ];
    for (trigger, j, kills) in table {
        assert_eq!(trigger.fails(j), kills, "{trigger:?} {j:?}");
        for trig in [Down, Loss, Latency, LossOrLatency] {
            assert!(!trig.fails(UP), "an up member never fails");
        }
        let p = with_trigger(two_wan(OnDown::Gateway, OnRecovery::Keep), trigger);
        let plan = judged(&p, &[UP, UP], &[j, UP], &ct_caps());
        if kills {
            assert_eq!(plan.steps.len(), 1, "{trigger:?} {j:?}: {plan:#?}");
            assert_eq!(plan.steps[0].purpose, down(&["WAN1"]));
            assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
        } else {
            assert!(plan.steps.is_empty(), "{trigger:?} {j:?}: {plan:#?}");
        }
    }
}

#[test]
fn a_latency_group_fails_over_from_a_slow_member_a_down_group_does_not() {
    let slow = |t| {
        judged(
            &with_trigger(two_wan(OnDown::Gateway, OnRecovery::Keep), t),
            &[UP, UP],
            &[LATENCY, UP],
            &pf_caps(),
        )
    };
    let plan = slow(Trigger::Latency);
    assert_eq!(plan.steps[0].action, kill(vec![rt(1), nat_on(1)], true));
    assert!(plan.steps[0].why.starts_with("WAN1 went down;"), "{}", plan.steps[0].why);
    assert!(slow(Trigger::Down).steps.is_empty());
    assert!(slow(Trigger::Loss).steps.is_empty());
}

#[test]
fn a_backup_that_is_failed_by_the_trigger_cannot_take_over() {
    // WAN1 goes down; the backup WAN2 is degraded by latency. In a `latency` group nothing
    // is usable, so nothing is killed (OPNsense #9789); in a `down` group WAN2 takes over.
    let p = with_trigger(two_wan(OnDown::Gateway, OnRecovery::Keep), Trigger::Latency);
    let plan = judged(&p, &[UP, LATENCY], &[DOWN, LATENCY], &ct_caps());
    assert!(plan.steps.is_empty(), "{plan:#?}");
    assert!(skip_reason(&plan, "WAN1").contains("no member of group main is usable"));
    let p = with_trigger(two_wan(OnDown::Gateway, OnRecovery::Keep), Trigger::Down);
    let plan = judged(&p, &[UP, LATENCY], &[DOWN, LATENCY], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
}

#[test]
fn a_member_whose_degradation_clears_recovers_and_fails_back() {
    let p = with_trigger(two_wan(OnDown::Gateway, OnRecovery::Kill), Trigger::Loss);
    let plan = judged(&p, &[LOSS, UP], &[UP, UP], &ct_caps());
    assert_eq!(plan.steps.len(), 1, "{plan:#?}");
    assert!(matches!(&plan.steps[0].purpose, Purpose::FailBack { group, .. } if group == "main"));
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    // Loss cleared but now slow: still failed in a loss-or-latency group, nothing moves.
    let p = with_trigger(two_wan(OnDown::Gateway, OnRecovery::Kill), Trigger::LossOrLatency);
    assert!(judged(&p, &[LOSS, UP], &[LATENCY, UP], &ct_caps()).steps.is_empty());
}

#[test]
fn a_gateway_still_used_by_another_group_is_not_killed() {
    // WAN1 is in a `latency` group and a `down` group: degraded by latency, the `down`
    // group still routes over it, and its states cannot be told apart by group.
    let mut p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![
            group("voice", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep),
            group("bulk", &[(0, 1), (2, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    p.groups[0].trigger = Trigger::Latency;
    assert!(p.usable(0, LATENCY));
    assert!(judged(&p, &[UP, UP, UP], &[LATENCY, UP, UP], &ct_caps()).steps.is_empty());
    // Both groups latency-triggered: failed everywhere, killed.
    p.groups[1].trigger = Trigger::Latency;
    assert!(!p.usable(0, LATENCY));
    let plan = judged(&p, &[UP, UP, UP], &[LATENCY, UP, UP], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
    // A gateway in no group fails only when down.
    let lone = policy(vec![gw(1)], vec![]);
    assert!(lone.usable(0, BOTH) && !lone.usable(0, DOWN));
}

// ---------------------------------------------------------------------------------------
// Catch-up of held-back kills

#[test]
fn held_back_states_are_killed_when_a_member_returns() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    // WAN1 died earlier (killed while WAN2 was up); now WAN2 dies: held back.
    let first = run(&p, &[false, false], &[1], &[], &ct_caps());
    assert!(first.is_empty());
    // WAN1 returns: WAN2 is still down and its states are stale now.
    let second = run(&p, &[true, false], &[], &[0], &ct_caps());
    assert_eq!(second.steps.len(), 1, "{second:#?}");
    assert_eq!(second.steps[0].purpose, down(&["WAN2"]));
    assert_eq!(second.steps[0].action, kill(vec![mark(2)], false));
    assert!(second.steps[0].why.contains("held back"), "{}", second.steps[0].why);
    assert!(second.explanation[0].starts_with("WAN2 still down: kill WAN2's states"));
    assert_eq!(second.sweep(), Some(kill(vec![mark(2)], false)));
}

#[test]
fn no_catch_up_when_a_member_was_usable_all_along() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Keep);
    // WAN3 died earlier while others were up (killed then); WAN2 returns now.
    let plan = run(&p, &[true, true, false], &[], &[1], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
}

#[test]
fn a_held_back_flush_is_never_run_late() {
    let p = two_wan(OnDown::All, OnRecovery::Keep);
    let plan = run(&p, &[true, false], &[], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    assert!(plan.explanation.iter().any(|l| l.contains("never run late")));

    // And when the gateway's states cannot be recognised, it is skipped, not an error.
    let p = policy(
        vec![gw(1), gw_with(2, StateMatch::default())],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::All, OnRecovery::Keep)],
    );
    let plan = run(&p, &[true, false], &[], &[0], &ct_caps());
    assert!(plan.is_empty());
    assert!(skip_reason(&plan, "WAN2").contains("cannot be recognised"));
}

#[test]
fn catch_up_joins_the_batch_down_step() {
    // "main": WAN1, WAN2 both down before; "other": WAN3 (down now), WAN4.
    let p = policy(
        vec![gw(1), gw(2), gw(3), gw(4)],
        vec![
            group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep),
            group("other", &[(2, 1), (3, 2)], OnDown::Gateway, OnRecovery::Keep),
        ],
    );
    let plan = run(&p, &[true, false, false, true], &[2], &[0], &ct_caps());
    assert_eq!(plan.steps.len(), 1, "{plan:#?}");
    assert_eq!(plan.steps[0].purpose, down(&["WAN2", "WAN3"]));
    assert_eq!(plan.steps[0].action, kill(vec![mark(2), mark(3)], false));
    assert_eq!(owned(&plan, 0), (vec![1, 2], vec![1, 2]), "the catch-up's selector is its own");
    assert!(plan.explanation[0].starts_with("WAN3 down, WAN2 still down: kill their states"));
}

// ---------------------------------------------------------------------------------------
// Rule 1: states that cannot be told apart

#[test]
fn a_nat_address_shared_with_a_healthy_gateway_is_never_used() {
    let shared =
        |n| gw_with(n, StateMatch { nat_addr: vec![ip("198.51.100.9")], ..StateMatch::default() });
    let p = policy(
        vec![shared(1), shared(2)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill)],
    );
    let plan = run(&p, &[false, true], &[0], &[], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
    assert!(skip_reason(&plan, "WAN1").contains("cannot be told apart"));
    // Same for fail-back.
    let plan = run(&p, &[true, true], &[], &[0], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
}

#[test]
fn pf_gateways_on_one_interface_with_one_nat_address_keep_their_rt_addr() {
    let on_igb0 = |n: u8| {
        gw_with(
            n,
            StateMatch {
                rt_addr: Some(ip(&format!("192.0.2.{n}"))),
                nat_addr: vec![ip("198.51.100.9")],
                interface: Some(IfName("igb0".into())),
                ..StateMatch::default()
            },
        )
    };
    let p = policy(
        vec![on_igb0(1), on_igb0(2)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, true], &[0], &[], &pf_caps());
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].action, kill(vec![rt(1)], true));
    assert!(
        plan.explanation.iter().any(|l| l.contains("NAT 198.51.100.9 on igb0 is not used")),
        "{:#?}",
        plan.explanation
    );
}

#[test]
fn overlapping_marks_are_never_used() {
    let with_mark = |n, value, mask| {
        gw_with(n, StateMatch { mark: Some(MarkMatch { value, mask }), ..StateMatch::default() })
    };
    // 0x1/0xff and 0x100/0xff00 can both match mark 0x101.
    let p = policy(
        vec![with_mark(1, 0x1, 0xff), with_mark(2, 0x100, 0xff00), with_mark(3, 0x3, 0xff)],
        vec![group("main", &[(0, 1), (1, 2), (2, 3)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, true, true], &[0], &[], &ct_caps());
    assert!(plan.is_empty(), "{plan:#?}");
    // 0x3/0xff does not overlap 0x1/0xff; it does overlap 0x100/0xff00.
    let plan = run(&p, &[true, true, false], &[2], &[], &ct_caps());
    assert!(plan.is_empty());
    // Same mask, different values: fine.
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    assert_eq!(run(&p, &[false, true], &[0], &[], &ct_caps()).steps.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Input checking

#[test]
fn inconsistent_transitions_kill_less() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    // "Down" but usable.
    let plan = run(&p, &[true, true], &[0], &[], &ct_caps());
    assert!(plan.is_empty());
    assert!(skip_reason(&plan, "WAN1").contains("reported down but usable"));
    // "Up" but not usable.
    let plan = run(&p, &[false, true], &[], &[0], &ct_caps());
    assert!(plan.is_empty());
    assert!(skip_reason(&plan, "WAN1").contains("reported up but not usable"));
    // Both, ended down: a down.
    let plan = run(&p, &[false, true], &[0], &[0], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(1)], false));
    // Both, ended up: a recovery.
    let plan = run(&p, &[true, true], &[0], &[0], &ct_caps());
    assert_eq!(plan.steps[0].action, kill(vec![mark(2)], false));
    assert!(matches!(plan.steps[0].purpose, Purpose::FailBack { .. }));
}

#[test]
fn bad_input_is_an_error() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Kill);
    let caps = ct_caps();
    let err =
        plan(&PlanInput { policy: &p, usable: &[true], went_down: &[], came_up: &[], caps: &caps })
            .unwrap_err();
    assert!(matches!(err, PolicyError::Invalid { .. }), "{err:?}");
    let err = plan(&PlanInput {
        policy: &p,
        usable: &[true, true],
        went_down: &[5],
        came_up: &[],
        caps: &caps,
    })
    .unwrap_err();
    assert!(matches!(err, PolicyError::UnknownGateway(..)), "{err:?}");
    let err = plan(&PlanInput {
        policy: &p,
        usable: &[true, true],
        went_down: &[],
        came_up: &[2],
        caps: &caps,
    })
    .unwrap_err();
    assert!(matches!(err, PolicyError::UnknownGateway(..)), "{err:?}");
}

#[test]
fn an_unrecognisable_down_gateway_is_an_error() {
    let p = policy(
        vec![
            gw_with(1, StateMatch { rt_addr: Some(ip("192.0.2.1")), ..StateMatch::default() }),
            gw(2),
        ],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Kill)],
    );
    let caps = ct_caps();
    let err = plan(&PlanInput {
        policy: &p,
        usable: &[false, true],
        went_down: &[0],
        came_up: &[],
        caps: &caps,
    })
    .unwrap_err();
    assert!(matches!(err, PolicyError::Unrecognisable { .. }), "{err:?}");
    // On pf the same policy works.
    assert_eq!(
        run(&p, &[false, true], &[0], &[], &pf_caps()).steps[0].action,
        kill(vec![rt(1)], true)
    );
}

// ---------------------------------------------------------------------------------------
// Rule 8: determinism

#[test]
fn same_input_same_plan_whatever_the_order() {
    let p = policy(
        vec![gw(1), gw(2), gw(3), gw(4)],
        vec![
            group("a", &[(0, 1), (1, 2), (3, 3)], OnDown::Gateway, OnRecovery::Kill),
            group("b", &[(2, 1), (3, 2)], OnDown::Gateway, OnRecovery::KillUnprotected),
        ],
    );
    let usable = [false, false, true, true];
    let a = run(&p, &usable, &[0, 1], &[2], &pf_caps());
    let b = run(&p, &usable, &[1, 0, 1], &[2, 2], &pf_caps());
    let c = run(&p, &usable, &[0, 1], &[2], &pf_caps());
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.explain(None), b.explain(None));
}

// ---------------------------------------------------------------------------------------
// explain and sweep

#[test]
fn explain_shows_what_why_and_counts() {
    let p = three_tier(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[false, false, true], &[0, 1], &[], &ct_caps());
    let counts = vec![vec![1234u64, 56]];
    let text = plan.explain(Some(&counts));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], plan.explanation[0]);
    assert!(lines[1].starts_with("1. kill-matching: WAN1 went down"), "{text}");
    assert!(text.contains("ct mark 0x1/0xff: 1234 states"), "{text}");
    assert!(text.contains("ct mark 0x2/0xff: 56 states"), "{text}");
    assert!(text.contains("expected: up to 1290 states"), "{text}");

    let unknown = plan.explain(None);
    assert!(unknown.contains("   ct mark 0x1/0xff\n"), "{unknown}");
    assert!(!unknown.contains("expected"), "{unknown}");
}

#[test]
fn explain_lists_skipped_items_last() {
    let p = policy(
        vec![gw(1), gw(2), gw(3)],
        vec![group("main", &[(0, 1), (1, 2)], OnDown::Gateway, OnRecovery::Keep)],
    );
    let plan = run(&p, &[false, true, false], &[0, 2], &[], &ct_caps());
    let text = plan.explain(None);
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("skipped WAN3: monitored only"), "{text}");
    assert_eq!(plan.explanation.last().map(String::as_str), Some(last));
}

#[test]
fn explain_with_kill_except_mentions_sparing() {
    let p = protected_policy(OnRecovery::KillUnprotected);
    let plan = run(&p, &[true, true], &[], &[0], &pf_caps());
    let text = plan.explain(Some(&[vec![10, 2]]));
    assert!(text.contains("kill-except"), "{text}");
    assert!(text.contains("less the protected flows spared"), "{text}");
    assert!(text.contains("plus their twins"), "{text}");
}

#[test]
fn an_empty_plan_says_nothing_to_do() {
    let p = two_wan(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[true, true], &[], &[], &ct_caps());
    assert!(plan.is_empty());
    assert_eq!(plan.explanation, vec!["nothing to do".to_string()]);
    assert_eq!(plan.explain(None), "nothing to do\n");
    assert!(plan.sweep().is_none());
    assert!(plan.sweep_actions().is_empty());
}

// ---------------------------------------------------------------------------------------
// Protected flows: flow_matches and resolve_except

fn ct_record(
    id: u32,
    proto: u8,
    client: (&str, u16),
    server: (&str, u16),
    nat: (&str, u16),
) -> StateRecord {
    let l4 = |src, dst| if ipproto::has_ports(proto) { L4::Ports { src, dst } } else { L4::None };
    let orig = StateKey { proto, src: ip(client.0), dst: ip(server.0), l4: l4(client.1, server.1) };
    let reply = StateKey { proto, src: ip(server.0), dst: ip(nat.0), l4: l4(server.1, nat.1) };
    StateRecord {
        handle: StateHandle::Conntrack { orig, id, zone: 0 },
        key: orig,
        detail: StateDetail::Conntrack { reply, mark: 2, zone: 0, status: 0, tcp_state: None },
        expires_in_secs: None,
        counters: None,
    }
}

fn pf_record(
    id: u64,
    proto: u8,
    client: (&str, u16),
    server: (&str, u16),
    nat: (&str, u16),
) -> StateRecord {
    let stack = StateKey {
        proto,
        src: ip(client.0),
        dst: ip(server.0),
        l4: L4::Ports { src: client.1, dst: server.1 },
    };
    let wire = StateKey {
        proto,
        src: ip(nat.0),
        dst: ip(server.0),
        l4: L4::Ports { src: nat.1, dst: server.1 },
    };
    StateRecord {
        handle: StateHandle::Pf { id, creator_id: 0 },
        key: stack,
        detail: StateDetail::Pf {
            direction: PfDirection::Out,
            interface: "igb2".into(),
            orig_interface: "igb2".into(),
            wire,
            stack,
            gateway: Some(ip("192.0.2.2")),
            rule: Some(3),
        },
        expires_in_secs: None,
        counters: None,
    }
}

fn flow(proto: Option<u8>, ports: &[(u16, u16)], prefixes: &[&str]) -> ProtectedFlow {
    ProtectedFlow {
        name: "f".into(),
        proto,
        ports: ports.iter().map(|&(first, last)| PortRange { first, last }).collect(),
        prefixes: prefixes.iter().map(|p| p.parse::<Prefix>().unwrap()).collect(),
    }
}

#[test]
fn flow_matches_truth_table() {
    // A phone 10.0.0.5:5062 registering to a provider 203.0.113.10:5060, NAT'd to
    // 198.51.100.2:40000.
    let r = ct_record(
        1,
        ipproto::UDP,
        ("10.0.0.5", 5062),
        ("203.0.113.10", 5060),
        ("198.51.100.2", 40000),
    );
    let udp = Some(ipproto::UDP);
    let tcp = Some(ipproto::TCP);
    let cases: &[(ProtectedFlow, bool, &str)] = &[
        (flow(udp, &[], &[]), true, "proto alone"),
        (flow(tcp, &[], &[]), false, "other proto"),
        (flow(None, &[(5060, 5060)], &[]), true, "server port"),
        (flow(None, &[(5062, 5062)], &[]), true, "client port"),
        (flow(None, &[(40000, 40000)], &[]), true, "NAT port (reply tuple)"),
        (flow(None, &[(5000, 5059), (5061, 5061)], &[]), false, "no port in any range"),
        (flow(None, &[(1, 65535)], &[]), true, "every port"),
        (flow(None, &[], &["10.0.0.0/24"]), true, "client prefix"),
        (flow(None, &[], &["203.0.113.0/24"]), true, "server prefix"),
        (flow(None, &[], &["198.51.100.2/32"]), true, "NAT address"),
        (flow(None, &[], &["192.168.0.0/16", "2001:db8::/32"]), false, "no address in any prefix"),
        (flow(udp, &[(5060, 5060)], &[]), true, "proto and port"),
        (flow(tcp, &[(5060, 5060)], &[]), false, "port right, proto wrong"),
        (flow(udp, &[(80, 80)], &[]), false, "proto right, port wrong"),
        (flow(udp, &[(5060, 5060)], &["10.0.0.0/24"]), true, "all three"),
        (flow(udp, &[(5060, 5060)], &["10.1.0.0/24"]), false, "all three, prefix wrong"),
        (flow(None, &[], &[]), true, "no field: spare (the loader refuses such flows)"),
    ];
    for (f, expected, what) in cases {
        assert_eq!(flow_matches(f, &r), *expected, "{what}");
    }

    // Protocols without ports never match a port list.
    let gre = ct_record(2, ipproto::GRE, ("10.0.0.5", 0), ("203.0.113.10", 0), ("198.51.100.2", 0));
    assert!(!flow_matches(&flow(None, &[(0, 65535)], &[]), &gre));
    assert!(flow_matches(&flow(Some(ipproto::GRE), &[], &["10.0.0.5/32"]), &gre));
}

#[test]
fn flow_matches_pf_uses_wire_and_stack_keys() {
    let r = pf_record(
        7,
        ipproto::UDP,
        ("10.0.0.5", 5062),
        ("203.0.113.10", 5060),
        ("198.51.100.2", 40000),
    );
    assert!(flow_matches(&flow(None, &[], &["10.0.0.5/32"]), &r), "stack key source");
    assert!(flow_matches(&flow(None, &[], &["198.51.100.2/32"]), &r), "wire key source");
    assert!(flow_matches(&flow(None, &[(40000, 40000)], &[]), &r), "wire key port");
    assert!(flow_matches(&flow(None, &[(5062, 5062)], &[]), &r), "stack key port");
    assert!(!flow_matches(&flow(None, &[(5063, 5063)], &[]), &r));
}

#[test]
fn resolve_except_dedupes_and_counts_spared_once() {
    let web1 = ct_record(
        1,
        ipproto::TCP,
        ("10.0.0.7", 50000),
        ("203.0.113.80", 443),
        ("198.51.100.2", 50000),
    );
    let sip_rec = ct_record(
        2,
        ipproto::UDP,
        ("10.0.0.5", 5062),
        ("203.0.113.10", 5060),
        ("198.51.100.2", 40000),
    );
    let rtp_rec = ct_record(
        3,
        ipproto::UDP,
        ("10.0.0.5", 12000),
        ("203.0.113.11", 30000),
        ("198.51.100.2", 12000),
    );
    // RTP port from a phone outside the protected prefix: not protected by "rtp".
    let rtp_other = ct_record(
        4,
        ipproto::UDP,
        ("10.9.0.5", 12000),
        ("203.0.113.11", 30000),
        ("198.51.100.2", 12001),
    );
    let web2 = ct_record(
        5,
        ipproto::TCP,
        ("10.0.0.8", 50001),
        ("203.0.113.80", 443),
        ("198.51.100.2", 50001),
    );
    // As two snapshots (mark and NAT address) would return them: with repeats.
    let records = vec![
        web1.clone(),
        sip_rec.clone(),
        rtp_rec.clone(),
        rtp_other.clone(),
        web2.clone(),
        sip_rec.clone(),
        web1.clone(),
        rtp_rec.clone(),
        web2.clone(),
    ];
    let resolved = resolve_except(&records, &[sip(), rtp()]);
    assert_eq!(resolved.handles, vec![web1.handle, rtp_other.handle, web2.handle]);
    assert_eq!(resolved.spared, 2);

    let nothing_protected = resolve_except(&records, &[]);
    assert_eq!(nothing_protected.spared, 0);
    assert_eq!(
        nothing_protected.handles,
        vec![web1.handle, sip_rec.handle, rtp_rec.handle, rtp_other.handle, web2.handle]
    );
    assert_eq!(resolve_except(&[], &[sip()]), Default::default());
}

#[test]
fn resolve_except_spares_both_pf_twins() {
    // The LAN-side twin (direction in, C -> S) and the WAN-side one (out, NAT -> S).
    let wan = pf_record(
        10,
        ipproto::UDP,
        ("10.0.0.5", 5062),
        ("203.0.113.10", 5060),
        ("198.51.100.2", 40000),
    );
    let lan_key = StateKey {
        proto: ipproto::UDP,
        src: ip("10.0.0.5"),
        dst: ip("203.0.113.10"),
        l4: L4::Ports { src: 5062, dst: 5060 },
    };
    let lan = StateRecord {
        handle: StateHandle::Pf { id: 11, creator_id: 0 },
        key: lan_key,
        detail: StateDetail::Pf {
            direction: PfDirection::In,
            interface: "igb0".into(),
            orig_interface: "igb0".into(),
            wire: lan_key,
            stack: lan_key,
            gateway: Some(ip("192.0.2.2")),
            rule: Some(3),
        },
        expires_in_secs: None,
        counters: None,
    };
    let resolved = resolve_except(&[wan, lan], &[sip()]);
    assert!(resolved.handles.is_empty());
    assert_eq!(resolved.spared, 2);
}

// ---------------------------------------------------------------------------------------
// Owners: per-gateway figures from per-selector counts

#[test]
fn owned_selectors_list_each_gateways_own_and_skip_the_unrecognisable() {
    let p = policy(
        vec![gw(1), gw_with(2, StateMatch::default()), gw(3)],
        vec![group("main", &[(0, 1), (1, 2), (2, 3)], OnDown::Gateway, OnRecovery::Keep)],
    );
    assert_eq!(
        owned_selectors(&p, &[0, 1, 2], &pf_caps()),
        OwnedSelectors {
            selectors: vec![rt(1), nat_on(1), rt(3), nat_on(3)],
            owners: vec![0, 0, 2, 2]
        }
    );
    assert_eq!(
        owned_selectors(&p, &[2, 0], &ct_caps()),
        OwnedSelectors { selectors: vec![mark(3), mark(1)], owners: vec![2, 0] },
        "in the order asked"
    );
    assert_eq!(owned_selectors(&p, &[1], &ct_caps()), OwnedSelectors::default());
    assert_eq!(owned_selectors(&p, &[9], &ct_caps()), OwnedSelectors::default(), "no such gateway");
}

#[test]
fn per_gateway_sums_what_each_owns() {
    // WAN1 owns two selectors, WAN3 one, WAN2 none: unknown, not zero.
    assert_eq!(per_gateway(&[0, 0, 2], &[5, 7, 1], 3), vec![Some(12), None, Some(1)]);
    assert_eq!(per_gateway(&[0, 1], &[4], 2), vec![Some(4), None], "counts missing: unknown");
    assert_eq!(per_gateway(&[0, 5], &[4, 4], 2), vec![Some(4), None], "an owner out of range");
    assert_eq!(per_gateway(&[], &[], 2), vec![None, None]);
}

#[test]
fn attribute_credits_the_steps_gateways_only() {
    assert_eq!(attribute(&[0, 1], &[0, 1, 1], &[3, 4, 5]), vec![(0, 3), (1, 9)]);
    assert_eq!(attribute(&[1, 0], &[0], &[3]), vec![(1, 0), (0, 3)], "in the step's order");
    assert_eq!(attribute(&[0], &[2], &[3]), vec![(0, 0)], "an owner outside the step");
    assert_eq!(attribute(&[0, 0], &[0], &[3]), vec![(0, 3), (0, 0)], "the first slot");
    // From a plan: two gateways down in one request, counted per selector.
    let p = three_tier(OnDown::Gateway, OnRecovery::Keep);
    let plan = run(&p, &[false, false, true], &[0, 1], &[], &pf_caps());
    let step = &plan.steps[0];
    let counts = [10, 1, 20, 2];
    assert_eq!(step.action.selectors(), [rt(1), nat_on(1), rt(2), nat_on(2)]);
    assert_eq!(attribute(&step.gateways, &step.owners, &counts), vec![(0, 11), (1, 22)]);
}

// ---------------------------------------------------------------------------------------
// Property: never a usable gateway's states (except a fail-back's lower tier), and never a
// step for a group with no usable member.

#[derive(Debug, Clone)]
struct Case {
    policy: Policy,
    usable: Vec<bool>,
    went_down: Vec<usize>,
    came_up: Vec<usize>,
    pf: bool,
}

fn on_down_strategy() -> impl Strategy<Value = OnDown> {
    prop_oneof![Just(OnDown::None), Just(OnDown::Gateway), Just(OnDown::All)]
}

fn on_recovery_strategy() -> impl Strategy<Value = OnRecovery> {
    prop_oneof![Just(OnRecovery::Keep), Just(OnRecovery::Kill), Just(OnRecovery::KillUnprotected)]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (2usize..=6)
        .prop_flat_map(|n| {
            let gateways = proptest::collection::vec((any::<bool>(), 0u8..4), n);
            let groups = proptest::collection::vec(
                (
                    proptest::collection::vec((0..n, 1u8..=3), 1..=4),
                    on_down_strategy(),
                    on_recovery_strategy(),
                ),
                0..=3,
            );
            let usable = proptest::collection::vec(any::<bool>(), n);
            let transitions = proptest::collection::vec(any::<bool>(), n);
            (gateways, groups, usable, transitions, any::<bool>(), any::<bool>())
        })
        .prop_map(|(gws, groups, usable, transitions, pf, protect)| {
            let gateways: Vec<Gateway> = gws
                .iter()
                .enumerate()
                .map(|(i, &(marked, nat_group))| {
                    let n = u8::try_from(i + 1).unwrap();
                    // Some gateways share a NAT address (nat_group 0 and 1 are shared pools),
                    // some have no mark: exercise the "cannot be told apart" guard.
                    let nat = if nat_group < 2 {
                        ip(&format!("198.51.100.{}", 200 + nat_group))
                    } else {
                        ip(&format!("198.51.100.{n}"))
                    };
                    gw_with(
                        n,
                        StateMatch {
                            rt_addr: Some(ip(&format!("192.0.2.{n}"))),
                            mark: marked.then_some(MarkMatch { value: u32::from(n), mask: 0xff }),
                            nat_addr: vec![nat],
                            nat_from_interface: false,
                            interface: Some(IfName(format!("igb{}", nat_group.min(2)))),
                        },
                    )
                })
                .collect();
            let groups: Vec<Group> = groups
                .into_iter()
                .enumerate()
                .map(|(i, (members, on_down, on_recovery))| {
                    let mut seen = Vec::new();
                    let members: Vec<(usize, u8)> = members
                        .into_iter()
                        .filter(|(g, _)| {
                            let fresh = !seen.contains(g);
                            seen.push(*g);
                            fresh
                        })
                        .collect();
                    group(&format!("g{i}"), &members, on_down, on_recovery)
                })
                .collect();
            let mut p = policy(gateways, groups);
            if protect {
                p.protected = vec![sip(), rtp()];
            }
            // A transition flips a gateway: down now (usable false) ⇒ went down; up ⇒ came up.
            let went_down = (0..usable.len()).filter(|&g| transitions[g] && !usable[g]).collect();
            let came_up = (0..usable.len()).filter(|&g| transitions[g] && usable[g]).collect();
            Case { policy: p, usable, went_down, came_up, pf }
        })
}

/// Which gateways a selector may belong to: an independent oracle. A gateway's states
/// carry its rt_addr (or none: default route), its NAT address on its interface, and its
/// mark (0 when it has none configured); the selector may match one of them when every
/// field it sets agrees with that profile.
fn owners(p: &Policy, s: &Selector) -> Vec<usize> {
    (0..p.gateways.len())
        .filter(|&g| {
            let m = &p.gateways[g].states;
            let mark = m.mark.unwrap_or(MarkMatch { value: 0, mask: u32::MAX });
            s.gateway.is_none_or(|a| m.rt_addr == Some(a))
                && s.nat_addr.is_none_or(|a| m.nat_addr.contains(&a))
                && s.interface.as_ref().is_none_or(|i| m.interface.as_ref() == Some(i))
                && s.mark.is_none_or(|k| (k.value ^ mark.value) & k.mask & mark.mask == 0)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_a_healthy_gateways_states(case in case_strategy()) {
        let caps = if case.pf { pf_caps() } else { ct_caps() };
        let p = &case.policy;
        let input = PlanInput {
            policy: p,
            usable: &case.usable,
            went_down: &case.went_down,
            came_up: &case.came_up,
            caps: &caps,
        };
        let plan = match plan(&input) {
            Ok(plan) => plan,
            Err(e) => {
                // Only a gateway without a mark on conntrack... every generated gateway has
                // a NAT address, so everything is recognisable on both backends.
                return Err(TestCaseError::fail(format!("unexpected error {e}")));
            }
        };
        // Deterministic.
        prop_assert_eq!(&plan, &statecull_policy::plan::plan(&input).unwrap());

        let index = |name: &str| p.gateway_index(name).unwrap();
        let viable = |gr: &Group| gr.members.iter().any(|m| case.usable[m.gateway]);
        for step in &plan.steps {
            // Owners: one per selector, each a gateway of the step whose own selectors
            // include it; the step's gateways are the ones its purpose names.
            prop_assert_eq!(step.owners.len(), step.action.selectors().len());
            for (s, &o) in step.action.selectors().iter().zip(&step.owners) {
                prop_assert!(step.gateways.contains(&o), "{} owned by {} outside the step", s, o);
                prop_assert!(gateway_selectors(p, o, &caps).unwrap().contains(s));
                let first = step.gateways.iter().find(|&&g| {
                    gateway_selectors(p, g, &caps).is_ok_and(|own| own.contains(s))
                });
                prop_assert_eq!(first, Some(&o), "a shared selector belongs to the first");
            }
            let named: Vec<usize> = match &step.purpose {
                Purpose::GatewayDown { gateways } | Purpose::FlushAll { gateways } => {
                    gateways.iter().map(|n| index(n)).collect()
                }
                Purpose::FailBack { lower, .. } => lower.iter().map(|n| index(n)).collect(),
            };
            prop_assert_eq!(&step.gateways, &named);
            // Limits and checks.
            if let Action::KillMatching { selectors, match_opposite } = &step.action {
                prop_assert!(!selectors.is_empty() && selectors.len() <= MAX_SELECTORS_PER_REQUEST);
                prop_assert_eq!(*match_opposite, caps.match_opposite);
            }
            for s in step.action.selectors() {
                prop_assert!(s.check().is_ok());
                for o in owners(p, s) {
                    if case.usable[o] {
                        let Purpose::FailBack { lower, .. } = &step.purpose else {
                            return Err(TestCaseError::fail(format!(
                                "{s} of usable {} in a down step: {plan:#?}", p.gateways[o].name
                            )));
                        };
                        prop_assert!(
                            lower.contains(&p.gateways[o].name),
                            "{} of usable {} not a lower tier: {:#?}", s, p.gateways[o].name, plan
                        );
                    }
                }
            }
            match &step.purpose {
                Purpose::GatewayDown { gateways } | Purpose::FlushAll { gateways } => {
                    for name in gateways {
                        let g = index(name);
                        prop_assert!(!case.usable[g]);
                        // Some group of it with on_down != none has a usable member.
                        prop_assert!(p.groups_of(g).any(|gr| gr.on_down != OnDown::None && viable(gr)));
                    }
                    if matches!(step.action, Action::Flush) {
                        prop_assert!(gateways.iter().any(|name| p
                            .groups_of(index(name))
                            .any(|gr| gr.on_down == OnDown::All && viable(gr))));
                    }
                }
                Purpose::FailBack { group, recovered, lower } => {
                    let gr = p.groups.iter().find(|g| &g.name == group).unwrap();
                    prop_assert!(viable(gr));
                    prop_assert!(gr.on_recovery != OnRecovery::Keep);
                    for name in recovered {
                        prop_assert!(case.usable[index(name)]);
                        prop_assert!(case.came_up.contains(&index(name)));
                    }
                    let rec_tier = gr
                        .members
                        .iter()
                        .filter(|m| recovered.contains(&p.gateways[m.gateway].name))
                        .map(|m| m.tier)
                        .min()
                        .unwrap();
                    // Traffic was on a worse tier before the batch.
                    let before = |g: usize| {
                        !case.came_up.contains(&g)
                            && (case.went_down.contains(&g) || case.usable[g])
                    };
                    let best_before = gr
                        .members
                        .iter()
                        .filter(|m| before(m.gateway))
                        .map(|m| m.tier)
                        .min();
                    prop_assert!(best_before.is_some_and(|b| rec_tier < b), "{:#?}", plan);
                    for name in lower {
                        let g = index(name);
                        prop_assert!(case.usable[g]);
                        prop_assert!(gr.members.iter().any(|m| m.gateway == g && m.tier > rec_tier));
                        prop_assert!(!recovered.contains(name));
                        // Not the best usable tier of any other group.
                        for other in p.groups.iter().filter(|o| &o.name != group) {
                            let best = other.members.iter().filter(|m| case.usable[m.gateway]).map(|m| m.tier).min();
                            prop_assert!(!other.members.iter().any(|m| m.gateway == g && Some(m.tier) == best));
                        }
                    }
                }
            }
        }
        // The sweep's requests are its actions, with owners taken from the down steps.
        let requests = plan.sweep_requests();
        prop_assert_eq!(
            requests.iter().map(|r| r.action.clone()).collect::<Vec<_>>(),
            plan.sweep_actions()
        );
        for r in &requests {
            prop_assert_eq!(r.owners.len(), r.action.selectors().len());
            for (s, o) in r.action.selectors().iter().zip(&r.owners) {
                let owned_by_step = plan.steps.iter().any(|st| {
                    matches!(st.purpose, Purpose::GatewayDown { .. })
                        && st.action.selectors().iter().zip(&st.owners).any(|(x, y)| x == s && y == o)
                });
                prop_assert!(owned_by_step, "{} swept as {}'s, which no down step says", s, o);
            }
        }
        // Down steps first.
        let first_fail_back = plan.steps.iter().position(|s| matches!(s.purpose, Purpose::FailBack { .. }));
        if let Some(i) = first_fail_back {
            let later_all_fail_back =
                plan.steps[i..].iter().all(|s| matches!(s.purpose, Purpose::FailBack { .. }));
            prop_assert!(later_all_fail_back, "down step after a fail-back step: {:#?}", plan);
        }
        // No usable member anywhere: nothing at all.
        if case.usable.iter().all(|u| !u) {
            prop_assert!(plan.is_empty());
        }
        // Every gateway that went down is accounted for: in a step or skipped.
        for &g in &case.went_down {
            let name = &p.gateways[g].name;
            let in_step = plan.steps.iter().any(|s| match &s.purpose {
                Purpose::GatewayDown { gateways } | Purpose::FlushAll { gateways } => gateways.contains(name),
                Purpose::FailBack { .. } => false,
            });
            prop_assert!(in_step || plan.skipped.iter().any(|s| &s.subject == name), "{} unaccounted: {:#?}", name, plan);
        }
        // At most one flush, and a flush is alone with... nothing else killing.
        let flushes = plan.steps.iter().filter(|s| s.action == Action::Flush).count();
        prop_assert!(flushes <= 1);
        if flushes == 1 {
            prop_assert_eq!(plan.steps.len(), 1);
        }
        // The explanation has a summary, one line per step, and one per skipped item.
        prop_assert!(plan.explanation.len() > plan.steps.len() + plan.skipped.len());
    }
}
