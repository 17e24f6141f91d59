//! What a client can send the engine's control socket, handled as the engine handles it: a
//! line of at most `MAX_CONTROL_LINE` bytes ending in a newline, `serde_json` into a
//! `ControlRequest`, then the engine's checks before acting (gateway names looked up in the
//! policy, a plan needs a gateway and cannot have one both down and up) and the dry-run plan
//! itself (`statecull_policy::plan::plan`, for each example policy and for conntrack's and
//! pf's capabilities). Also what the CLI reads back: the same bytes as a `ControlReply` and as
//! an `Event`. Nothing may panic; whatever parses re-encodes to JSON that parses to the same
//! value; every selector a plan builds passes the broker's own check.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use statecull_control::{ControlReply, ControlRequest, Event, MAX_CONTROL_LINE};
use statecull_policy::Policy;
use statecull_policy::plan::{PlanInput, plan};
use statecull_proto::{Capabilities, SelectorField};

fn policies() -> &'static [Policy] {
    static POLICIES: OnceLock<Vec<Policy>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        [
            ("pfsense", include_str!("../../policy/examples/pfsense-two-wan.toml")),
            ("linux", include_str!("../../policy/examples/linux-mwan-three-wan.toml")),
            ("balanced", include_str!("../../policy/examples/load-balanced.toml")),
        ]
        .into_iter()
        .map(|(name, text)| statecull_policy::load::parse(text, name).expect("an example parses"))
        .collect()
    })
}

fn caps() -> [Capabilities; 2] {
    use SelectorField as F;
    let conntrack = Capabilities {
        selector_fields: vec![
            F::Family,
            F::Proto,
            F::Src,
            F::Dst,
            F::SrcPort,
            F::DstPort,
            F::Mark,
            F::NatAddr,
        ],
        kernel_mark_flush: true,
        kernel_tuple_flush: vec![],
        kernel_tuple_broken: vec![],
        listing_only: vec![],
        match_opposite: false,
        flush_by_interface: false,
        ruleset_ticket: false,
    };
    let pf = Capabilities {
        selector_fields: vec![
            F::Family,
            F::Proto,
            F::Src,
            F::Dst,
            F::SrcPort,
            F::DstPort,
            F::NatAddr,
            F::Gateway,
            F::Interface,
            F::Label,
        ],
        kernel_mark_flush: false,
        kernel_tuple_flush: vec![],
        kernel_tuple_broken: vec![],
        listing_only: vec![],
        match_opposite: true,
        flush_by_interface: true,
        ruleset_ticket: true,
    };
    [conntrack, pf]
}

fuzz_target!(|data: &[u8]| {
    // The CLI's side: replies and events.
    if let Ok(reply) = serde_json::from_slice::<ControlReply>(data) {
        let text = serde_json::to_vec(&reply).expect("a reply encodes");
        assert_eq!(
            serde_json::from_slice::<ControlReply>(&text).expect("re-encoded reply parses"),
            reply
        );
    }
    if let Ok(event) = serde_json::from_slice::<Event>(data) {
        let text = serde_json::to_vec(&event).expect("an event encodes");
        assert_eq!(serde_json::from_slice::<Event>(&text).expect("re-encoded event parses"), event);
    }

    // The engine's side: framing, then the request.
    if data.len() > MAX_CONTROL_LINE + 1 || data.last() != Some(&b'\n') {
        return;
    }
    let Ok(req) = serde_json::from_slice::<ControlRequest>(data) else { return };
    let text = serde_json::to_vec(&req).expect("a request encodes");
    assert_eq!(
        serde_json::from_slice::<ControlRequest>(&text).expect("re-encoded request parses"),
        req
    );

    let bits = data.iter().fold(0u32, |a, b| a.rotate_left(5) ^ u32::from(*b));
    for policy in policies() {
        match &req {
            ControlRequest::Gateway { name, .. } => {
                if let Some(g) = policy.gateway_index(name) {
                    assert_eq!(&policy.gateways[g].name, name);
                }
            }
            ControlRequest::Plan { down, up } => dry_run(policy, down, up, bits),
            ControlRequest::Status | ControlRequest::Events { .. } | ControlRequest::Reload => {}
        }
    }
});

/// The engine's dry run without the broker: the same checks, then the plan.
fn dry_run(policy: &Policy, down: &[String], up: &[String], bits: u32) {
    if down.is_empty() && up.is_empty() {
        return;
    }
    let index = |names: &[String]| -> Option<Vec<usize>> {
        names.iter().map(|n| policy.gateway_index(n)).collect()
    };
    let (Some(down), Some(up)) = (index(down), index(up)) else { return };
    if down.iter().any(|g| up.contains(g)) {
        return;
    }
    // The health before the simulated changes comes from the input too.
    let mut usable: Vec<bool> =
        (0..policy.gateways.len()).map(|g| bits >> (g % 32) & 1 == 0).collect();
    for &g in &down {
        usable[g] = false;
    }
    for &g in &up {
        usable[g] = true;
    }
    for caps in caps() {
        let input =
            PlanInput { policy, usable: &usable, went_down: &down, came_up: &up, caps: &caps };
        let Ok(p) = plan(&input) else { continue };
        for step in &p.steps {
            for sel in step.action.selectors() {
                assert!(
                    sel.check().is_ok(),
                    "the plan built a selector the broker refuses: {sel:?}"
                );
            }
        }
        for action in p.sweep_actions() {
            for sel in action.selectors() {
                assert!(
                    sel.check().is_ok(),
                    "the sweep built a selector the broker refuses: {sel:?}"
                );
            }
        }
        let counts: Vec<Vec<u64>> =
            p.steps.iter().map(|s| vec![7; s.action.selectors().len()]).collect();
        let _ = p.explain(Some(&counts));
        let _ = p.explain(None);
    }
}
