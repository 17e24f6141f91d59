//! The importer on every fixture (pfSense and OPNsense `config.xml` files written from their
//! schemas): the policy it prints loads with the policy crate, as `statecull check-policy`
//! loads it, and carries the translated values.
// clippy.toml allows these inside #[test] functions only; the shared helpers assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use statecull_import::{Import, Severity, System, import};
use statecull_policy::Policy;
use statecull_policy::model::{Gateway, HealthSource, OnDown, OnRecovery, RoutingConfirm};
use statecull_policy::portability::{self, Level, TargetOs};

fn dir(system: System) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(system.word())
}

fn run(system: System, file: &str) -> (Import, Policy) {
    let xml = std::fs::read_to_string(dir(system).join(file)).unwrap();
    let out = import(system, &xml, file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let policy = statecull_policy::load::parse(&out.policy, file).unwrap_or_else(|e| {
        panic!("{file}: the generated policy does not load: {e}\n{}", out.policy)
    });
    (out, policy)
}

fn gw<'p>(p: &'p Policy, name: &str) -> &'p Gateway {
    p.gateways.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no gateway {name}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn dpinger(g: &Gateway) -> &str {
    match &g.source {
        HealthSource::Dpinger { socket } => socket,
        other => panic!("{} reads {other:?}, not dpinger", g.name),
    }
}

/// `(group name) -> [(gateway, tier)]`, in tier order.
fn members(p: &Policy, group: &str) -> Vec<(String, u8)> {
    let g = p.groups.iter().find(|g| g.name == group).unwrap_or_else(|| panic!("no group {group}"));
    g.members.iter().map(|m| (p.gateways[m.gateway].name.clone(), m.tier)).collect()
}

fn group_modes(p: &Policy, group: &str) -> (OnDown, OnRecovery) {
    let g = p.groups.iter().find(|g| g.name == group).unwrap();
    (g.on_down, g.on_recovery)
}

fn has_warning(out: &Import, path_part: &str, message_part: &str) -> bool {
    out.warnings.iter().any(|w| {
        w.severity == Severity::Warning
            && w.path.contains(path_part)
            && w.message.contains(message_part)
    })
}

fn pairs(list: &[(&str, u8)]) -> Vec<(String, u8)> {
    list.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
}

#[test]
fn every_fixture_imports_into_a_policy_that_loads() {
    for system in [System::PfSense, System::OpnSense] {
        let mut n = 0;
        for entry in std::fs::read_dir(dir(system)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.ends_with(".xml") {
                continue;
            }
            let (out, policy) = run(system, &name);
            assert!(out.policy.starts_with("# statecull policy imported from the "), "{name}");
            assert!(out.policy.contains(&format!("statecull import {}", system.word())), "{name}");
            assert!(!policy.gateways.is_empty() && !policy.groups.is_empty(), "{name}");
            // Both systems move traffic by reloading the ruleset: the engine waits for it.
            assert_eq!(policy.routing.confirm, RoutingConfirm::PfRuleset, "{name}");
            // What `check-policy --target-os freebsd` adds: nothing that cannot work on pf.
            let errors: Vec<_> = portability::check(&policy, TargetOs::FreeBsd)
                .into_iter()
                .filter(|f| f.level == Level::Error)
                .collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            // Deterministic: the same input, the same text.
            assert_eq!(run(system, &name).0.policy, out.policy, "{name}");
            n += 1;
        }
        assert!(n >= 5, "{} fixtures for {}", n, system.name());
    }
}

#[test]
fn pfsense_two_wan_failover() {
    let (out, p) = run(System::PfSense, "two-wan-failover.xml");
    let wan1 = gw(&p, "WAN1");
    assert_eq!(wan1.interface.to_string(), "igb0", "wan is translated to its device");
    assert_eq!(wan1.address, ip("198.51.100.254"));
    assert_eq!(dpinger(wan1), "/var/run/dpinger_WAN1~198.51.100.1~192.0.2.53.sock");
    // losslow 5 / losshigh 15: down above 15%, warning above 5%.
    assert_eq!(
        (wan1.health.loss_down_pct, wan1.health.loss_degraded_pct, wan1.health.loss_up_pct),
        (16.0, 6.0, 5.0)
    );
    assert_eq!(wan1.states.rt_addr, Some(ip("198.51.100.254")));
    // Interface address, the IP alias VIP, the hybrid outbound rule's target.
    assert_eq!(wan1.states.nat_addr, ips(&["198.51.100.1", "198.51.100.5", "198.51.100.6"]));
    assert_eq!(wan1.states.interface.as_ref().map(ToString::to_string).as_deref(), Some("igb0"));
    let wan2 = gw(&p, "WAN2");
    assert_eq!(wan2.states.nat_addr, ips(&["203.0.113.1"]), "the disabled rule is not read");
    assert_eq!(wan2.health.latency_degraded.as_millis(), 301);
    assert_eq!(dpinger(wan2), "/var/run/dpinger_WAN2~203.0.113.1~203.0.113.254.sock");
    assert_eq!(members(&p, "failover"), pairs(&[("WAN1", 1), ("WAN2", 2)]));
    assert_eq!(group_modes(&p, "failover"), (OnDown::Gateway, OnRecovery::Kill));
    assert!(has_warning(&out, "/pfsense/system/gw_down_kill_states", "TURN IT OFF"));
    assert!(has_warning(&out, "gateway_item[2]/latencyhigh", "800 ms"));
    assert!(
        p.engine.readable_paths.is_empty(),
        "Capsicum ignores readable_paths; the dialer reaches dpinger"
    );
    assert!(out.policy.contains("# pfSense's dpinger probes 192.0.2.53 for this gateway."));
}

#[test]
fn pfsense_three_wan_tiers_and_flush_all() {
    let (out, p) = run(System::PfSense, "three-wan-tiered.xml");
    assert_eq!(members(&p, "tiered"), pairs(&[("FIBRE_GW", 1), ("CABLE_GW", 2), ("LTE_GW", 3)]));
    // "Flush all states" is kept as on_down = all; the global keep checkbox spares groups
    // unless they say "kill".
    assert_eq!(group_modes(&p, "tiered"), (OnDown::All, OnRecovery::Kill));
    assert_eq!(group_modes(&p, "cable_first"), (OnDown::All, OnRecovery::Keep));
    assert_eq!(gw(&p, "LTE_GW").interface.to_string(), "igb3.100");
    assert_eq!(gw(&p, "LTE_GW").source, HealthSource::External, "action disabled");
    assert_eq!(
        dpinger(gw(&p, "CABLE_GW")),
        "/var/run/dpinger_CABLE_GW~203.0.113.1~198.18.10.1.sock"
    );
    // "Packet Loss" is translated, and no longer a warning.
    use statecull_policy::model::Trigger;
    assert_eq!(p.groups.iter().find(|g| g.name == "tiered").unwrap().trigger, Trigger::Loss);
    assert_eq!(p.groups.iter().find(|g| g.name == "cable_first").unwrap().trigger, Trigger::Down);
    assert!(!out.warnings.iter().any(|w| w.path.contains("trigger")), "{:?}", out.warnings);
    assert!(has_warning(&out, "gateway_item[3]/action_disable", "external"));
    assert!(has_warning(&out, "/pfsense/system/gw_down_kill_states", "Flush all states"));
}

#[test]
fn pfsense_load_balancing_with_carp_and_advanced_nat() {
    let (out, p) = run(System::PfSense, "load-balance.xml");
    assert_eq!(members(&p, "balance"), pairs(&[("ISPA_GW", 1), ("ISPB_GW", 1)]));
    // The CARP VIP, the alias stacked on it (interface _vipaaa111), the rule's target.
    assert_eq!(
        gw(&p, "ISPA_GW").states.nat_addr,
        ips(&["198.51.100.2", "198.51.100.10", "198.51.100.11"])
    );
    assert_eq!(
        gw(&p, "ISPB_GW").states.nat_addr,
        ips(&["203.0.113.2", "203.0.113.10", "203.0.113.16"])
    );
    assert!(has_warning(&out, "rule[2]/targetip_subnet", "203.0.113.16/29"));
    assert!(has_warning(&out, "rule[3]/target", "Outbound_Pool"));
    assert!(
        !out.warnings.iter().any(|w| w.path.contains("vip")),
        "single CARP VIPs are no networks"
    );
}

#[test]
fn pfsense_dhcp_and_pppoe_wans_get_placeholders_and_warnings() {
    let (out, p) = run(System::PfSense, "dhcp-pppoe.xml");
    let cable = gw(&p, "CABLE_DHCP");
    assert_eq!(cable.address, ip("240.0.1.254"));
    // The NAT address is the interface's, followed at run time; the next hop stays a
    // placeholder (the policy needs a literal address).
    assert!(cable.states.nat_from_interface && cable.states.nat_addr.is_empty());
    assert!(out.policy.contains("nat_addr = \"interface\"   # igb0's addresses"), "{}", out.policy);
    assert!(has_warning(&out, "gateway_item/gateway", "nat_addr = \"interface\" follows them"));
    assert_eq!(dpinger(cable), "/var/run/dpinger_CABLE_DHCP~240.0.1.1~240.0.1.254.sock");
    // No gateway item for the PPPoE WAN: pfSense makes DSL_PPPOE, on the ppp device.
    let dsl = gw(&p, "DSL_PPPOE");
    assert_eq!(dsl.interface.to_string(), "pppoe0");
    assert_eq!(dsl.states.rt_addr, Some(ip("240.0.2.254")));
    assert!(dsl.states.nat_from_interface && dsl.states.nat_addr.is_empty());
    assert_eq!(members(&p, "failover"), pairs(&[("CABLE_DHCP", 1), ("DSL_PPPOE", 2)]));
    assert!(has_warning(&out, "gateway_item/gateway", "placeholders 240.0.1.254"));
    assert!(has_warning(&out, "/pfsense/interfaces/opt1", "placeholders 240.0.2.254"));
    assert!(out.policy.contains("# PLACEHOLDER"));
    // An empty <gw_down_kill_states/> kills per gateway in gwlb.inc (it is not 'none').
    assert!(has_warning(&out, "gw_down_kill_states", "CABLE_DHCP, DSL_PPPOE"));
}

#[test]
fn pfsense_ipv6_gateways() {
    let (out, p) = run(System::PfSense, "ipv6.xml");
    assert_eq!(members(&p, "v6"), pairs(&[("WAN1_V6", 1), ("WAN2_V6", 2)]));
    let v6 = gw(&p, "WAN1_V6");
    assert_eq!(v6.states.nat_addr, ips(&["2001:db8:a::1"]));
    assert_eq!(dpinger(v6), "/var/run/dpinger_WAN1_V6~2001:db8:a::1~2001:db8:ffff::53.sock");
    let ll = gw(&p, "WAN2_V6");
    assert_eq!(ll.address, ip("fe80::1"), "the zone is the interface");
    assert_eq!(dpinger(ll), "/var/run/dpinger_WAN2_V6~fe80::LINK-LOCAL%igb1~fe80::1%igb1.sock");
    assert!(has_warning(&out, "gateway_item[4]", "fe80::LINK-LOCAL%igb1"));
    assert_eq!(
        gw(&p, "WAN1").states.nat_addr,
        ips(&["198.51.100.1"]),
        "IPv4 gateways keep IPv4 addresses"
    );
}

#[test]
fn opnsense_two_wan_failover_from_the_mvc_model() {
    let (out, p) = run(System::OpnSense, "two-wan-failover.xml");
    assert!(p.gateways.iter().all(|g| g.name != "OLD_GW"), "the legacy list is ignored");
    let wan1 = gw(&p, "WAN1_GW");
    assert_eq!(wan1.interface.to_string(), "vtnet0");
    assert_eq!(dpinger(wan1), "/var/run/dpinger_WAN1_GW.sock");
    assert_eq!(wan1.health.loss_down_pct, 16.0);
    assert_eq!(wan1.states.nat_addr, ips(&["198.51.100.1", "198.51.100.6"]));
    // The enabled MVC source NAT rule counts, the disabled one does not.
    assert_eq!(gw(&p, "WAN2_GW").states.nat_addr, ips(&["203.0.113.1", "203.0.113.7"]));
    assert_eq!(members(&p, "failover"), pairs(&[("WAN1_GW", 1), ("WAN2_GW", 2)]));
    assert_eq!(group_modes(&p, "failover"), (OnDown::Gateway, OnRecovery::Keep));
    assert!(has_warning(&out, "gateway_item[1]/monitor_killstates", "TURN THEM OFF"));
    assert!(
        out.warnings
            .iter()
            .any(|w| w.severity == Severity::Note && w.path.starts_with("/opnsense/gateways "))
    );
}

#[test]
fn opnsense_three_wan_from_the_legacy_list_with_mvc_group_items() {
    let (out, p) = run(System::OpnSense, "three-wan-tiered.xml");
    assert_eq!(members(&p, "tiered"), pairs(&[("FIBRE_GW", 1), ("CABLE_GW", 2), ("LTE_GW", 3)]));
    assert_eq!(group_modes(&p, "tiered"), (OnDown::Gateway, OnRecovery::Kill));
    assert_eq!(dpinger(gw(&p, "LTE_GW")), "/var/run/dpinger_LTE_GW.sock");
    use statecull_policy::model::Trigger;
    assert_eq!(p.groups.iter().find(|g| g.name == "tiered").unwrap().trigger, Trigger::Latency);
    assert!(!out.warnings.iter().any(|w| w.path.contains("trigger")), "{:?}", out.warnings);
    assert!(has_warning(&out, "gateway_item[3]/monitor_killstates_priority", "TURN THEM OFF"));
    // Default gateway switching is a failover of the default route, by priority.
    assert_eq!(
        members(&p, "default-gw4"),
        pairs(&[("FIBRE_GW", 1), ("CABLE_GW", 2), ("LTE_GW", 3)])
    );
    assert_eq!(group_modes(&p, "default-gw4"), (OnDown::Gateway, OnRecovery::Kill));
}

#[test]
fn opnsense_load_balancing() {
    let (out, p) = run(System::OpnSense, "load-balance.xml");
    assert_eq!(members(&p, "balance"), pairs(&[("ISPA_GW", 1), ("ISPB_GW", 1)]));
    assert!(p.gateways.iter().all(|g| g.name != "SPARE_GW"), "disabled");
    assert_eq!(gw(&p, "ISPA_GW").states.nat_addr, ips(&["198.51.100.2", "198.51.100.10"]));
    assert_eq!(gw(&p, "ISPB_GW").states.nat_addr, ips(&["203.0.113.2", "203.0.113.10"]));
    assert!(
        out.warnings
            .iter()
            .any(|w| w.severity == Severity::Note && w.message.contains("SPARE_GW is disabled"))
    );
    assert_eq!(out.serious().count(), 0, "{:?}", out.warnings);
}

#[test]
fn opnsense_dhcp_and_pppoe_wans() {
    let (out, p) = run(System::OpnSense, "dhcp-pppoe.xml");
    let cable = gw(&p, "CABLE_DHCP");
    // OPNsense names the socket after the gateway alone: nothing to replace there.
    assert_eq!(dpinger(cable), "/var/run/dpinger_CABLE_DHCP.sock");
    assert_eq!(cable.address, ip("240.0.1.254"));
    let dsl = gw(&p, "DSL_PPPOE");
    assert_eq!(dsl.interface.to_string(), "pppoe0");
    assert_eq!(
        dsl.source,
        HealthSource::External,
        "OPNsense does not monitor the gateways it makes"
    );
    assert!(has_warning(&out, "/opnsense/interfaces/opt1", "no dpinger"));
    assert!(has_warning(&out, "gateway_item/monitor_killstates", "CABLE_DHCP"));
}

#[test]
fn opnsense_ipv6_with_a_dhcp6_wan() {
    let (out, p) = run(System::OpnSense, "ipv6.xml");
    assert_eq!(members(&p, "v6"), pairs(&[("WAN1_GWV6", 1), ("WAN2_DHCP6", 2)]));
    let d6 = gw(&p, "WAN2_DHCP6");
    assert_eq!(d6.address, ip("100::1:fe"));
    assert!(d6.states.nat_from_interface && d6.states.nat_addr.is_empty());
    assert_eq!(gw(&p, "WAN1_GWV6").states.nat_addr, ips(&["2001:db8:a::1"]));
    assert!(has_warning(&out, "/opnsense/interfaces/opt1", "dhcp6"));
}
