//! Unknown and contradictory content: each gives a warning or an error naming the XML path,
//! and whatever is imported still loads as a policy.
// clippy.toml allows these inside #[test] functions only; the shared helpers assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use statecull_import::{Import, ImportError, Severity, System, import};
use statecull_policy::Policy;

const IFACES: &str = "<interfaces>\
    <wan><enable/><if>igb0</if><ipaddr>198.51.100.1</ipaddr><subnet>24</subnet><gateway>WAN1</gateway></wan>\
    <opt1><enable/><if>igb1</if><ipaddr>203.0.113.1</ipaddr><subnet>24</subnet><gateway>WAN2</gateway></opt1>\
    <lan><enable/><if>igb2</if><ipaddr>192.0.2.1</ipaddr><subnet>24</subnet></lan>\
    </interfaces>";

fn item(name: &str, iface: &str, gateway: &str, extra: &str) -> String {
    format!(
        "<gateway_item><interface>{iface}</interface><gateway>{gateway}</gateway>\
         <name>{name}</name><ipprotocol>inet</ipprotocol>{extra}</gateway_item>"
    )
}

fn pfsense(gateways: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<pfsense>\n{IFACES}\n<gateways>\n{gateways}\n</gateways>\n</pfsense>\n"
    )
}

fn two_wans(extra1: &str, extra2: &str, groups: &str) -> String {
    pfsense(&format!(
        "{}\n{}\n{groups}",
        item("WAN1", "wan", "198.51.100.254", extra1),
        item("WAN2", "opt1", "203.0.113.254", extra2)
    ))
}

fn ok(xml: &str) -> (Import, Policy) {
    let out = import(System::PfSense, xml, "config.xml").unwrap_or_else(|e| panic!("{e}\n{xml}"));
    let p = statecull_policy::load::parse(&out.policy, "out.toml")
        .unwrap_or_else(|e| panic!("{e}\n{}", out.policy));
    (out, p)
}

fn warned(out: &Import, path: &str, message: &str) {
    assert!(
        out.warnings.iter().any(|w| w.severity == Severity::Warning
            && w.path.contains(path)
            && w.message.contains(message)),
        "no warning at {path:?} saying {message:?}: {:#?}",
        out.warnings
    );
}

fn invalid(xml: &str) -> (String, String) {
    match import(System::PfSense, xml, "config.xml") {
        Err(ImportError::Invalid { path, message, .. }) => (path, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn a_group_member_naming_a_missing_gateway_is_left_out_with_a_warning() {
    let (out, p) = ok(&two_wans(
        "",
        "",
        "<gateway_group><name>g</name><item>WAN1|1|address</item><item>WAN9|2|address</item>\
         <item>WAN2|2|address</item><trigger>down</trigger></gateway_group>",
    ));
    warned(
        &out,
        "/pfsense/gateways/gateway_group/item[2] (line 7)",
        "\"WAN9\", which is not defined",
    );
    assert_eq!(p.groups[0].members.len(), 2);
    assert_eq!(out.serious().count(), 2, "the missing member and pfSense's recovery killing");
}

#[test]
fn a_gateway_on_an_unknown_interface_is_skipped_with_a_warning() {
    let xml = pfsense(&format!(
        "{}\n{}",
        item("WAN1", "wan", "198.51.100.254", ""),
        item("WAN3", "opt7", "198.18.0.1", "")
    ));
    let (out, p) = ok(&xml);
    warned(&out, "gateway_item[2]/interface", "\"opt7\", which <interfaces> does not define");
    assert_eq!(p.gateways.len(), 1);
}

#[test]
fn two_gateways_with_one_name_are_an_error_naming_both() {
    let xml = pfsense(&format!(
        "{}\n{}",
        item("WAN1", "wan", "198.51.100.254", ""),
        item("wan1", "opt1", "203.0.113.254", "")
    ));
    let (path, message) = invalid(&xml);
    assert_eq!(path, "/pfsense/gateways/gateway_item[2]/name (line 6)");
    assert!(message.contains("gateway_item[1]/name (line 5)"), "{message}");
}

#[test]
fn a_name_statecull_cannot_use_is_an_error() {
    let xml = pfsense(&item("WAN 1", "wan", "198.51.100.254", ""));
    let (path, message) = invalid(&xml);
    assert!(path.contains("gateway_item/name"), "{path}");
    assert!(message.contains("\"WAN 1\""), "{message}");
}

#[test]
fn unknown_elements_are_named() {
    let (out, _) = ok(&two_wans("<frobnicate>1</frobnicate>", "", ""));
    warned(&out, "gateway_item[1]/frobnicate", "unknown element <frobnicate>");
}

#[test]
fn a_group_mixing_families_keeps_the_first_family() {
    let xml = pfsense(&format!(
        "{}\n{}\n<gateway_group><name>mixed</name><item>WAN1|1|address</item><item>V6|2|address</item></gateway_group>",
        item("WAN1", "wan", "198.51.100.254", ""),
        "<gateway_item><interface>opt1</interface><gateway>2001:db8:b::fffe</gateway><name>V6</name><ipprotocol>inet6</ipprotocol></gateway_item>"
    ));
    let (out, p) = ok(&xml);
    warned(&out, "gateway_group/item[2]", "mixes IPv4 gateway WAN1 with IPv6 gateway V6");
    assert_eq!(p.groups[0].members.len(), 1);
}

#[test]
fn bad_tiers_and_thresholds_are_warned_and_defaulted() {
    let (out, p) = ok(&two_wans(
        "<losslow>30</losslow><losshigh>20</losshigh>",
        "<latencylow>fast</latencylow>",
        "<gateway_group><name>g</name><item>WAN1|one|address</item><item>WAN2|2|address</item></gateway_group>",
    ));
    warned(&out, "gateway_group/item[1]", "tier \"one\"");
    warned(&out, "gateway_item[1] (line 5)", "losslow 30% must be below losshigh 20%");
    warned(&out, "gateway_item[2]/latencylow", "\"fast\" is not a whole number");
    assert_eq!(p.gateways[0].health.loss_down_pct, 21.0, "pfSense's defaults");
    assert_eq!(p.gateways[1].health.latency_up.as_millis(), 200);
}

#[test]
fn gateways_that_cannot_be_told_apart_lose_the_shared_recogniser() {
    // Two gateways on one interface share its NAT address, and two share a next hop.
    let xml = pfsense(&format!(
        "{}\n{}\n{}",
        item("A", "wan", "198.51.100.254", ""),
        item("B", "wan", "198.51.100.253", ""),
        item("C", "opt1", "198.51.100.254", "")
    ));
    let (out, p) = ok(&xml);
    warned(&out, "gateway_item[2]", "NAT address 198.51.100.1 on igb0 is already gateway A's");
    warned(&out, "gateway_item[3]", "same address 198.51.100.254 as gateway A");
    let b = p.gateways.iter().find(|g| g.name == "B").unwrap();
    assert!(b.states.nat_addr.is_empty() && b.states.rt_addr.is_some());
}

#[test]
fn pfsense_runs_one_dpinger_per_monitor_address() {
    let (out, p) =
        ok(&two_wans("<monitor>192.0.2.53</monitor>", "<monitor>192.0.2.53</monitor>", ""));
    warned(&out, "gateway_item[2]/monitor", "one dpinger per monitor address");
    assert_eq!(p.gateways[1].source, statecull_policy::model::HealthSource::External);
}

#[test]
fn no_usable_gateway_is_an_error() {
    let (path, message) = invalid(&pfsense(&item("WAN1", "wan", "198.51.100.254", "<disabled/>")));
    assert!(path.starts_with("/pfsense (line 2)"), "{path}");
    assert!(message.contains("no usable gateway"), "{message}");
}

#[test]
fn the_wrong_system_or_broken_xml_is_refused_clearly() {
    let xml = two_wans("", "", "");
    match import(System::OpnSense, &xml, "config.xml") {
        Err(e @ ImportError::WrongFile { .. }) => {
            assert!(e.to_string().contains("use `statecull import pfsense`"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match import(System::PfSense, "<pfsense>\n<gateways>\n</pfsense>", "config.xml") {
        Err(e @ ImportError::Xml { line: 3, .. }) => {
            assert!(e.to_string().starts_with("config.xml:3:"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let encrypted = "---- BEGIN config.xml ----\nU2FsdGVkX1\n---- END config.xml ----\n";
    match import(System::PfSense, encrypted, "backup.xml") {
        Err(e @ ImportError::WrongFile { .. }) => {
            assert!(e.to_string().contains("decrypt it first"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // No DTD (and so no entity expansion) in a firewall's configuration.
    let dtd = "<!DOCTYPE pfsense [<!ENTITY a \"x\">]><pfsense/>";
    assert!(matches!(import(System::PfSense, dtd, "c"), Err(ImportError::Xml { .. })));
}

#[test]
fn strict_mode_sees_only_warnings() {
    let (out, _) = ok(&two_wans("<disabled/>", "", ""));
    assert!(
        out.warnings
            .iter()
            .any(|w| w.severity == Severity::Note && w.message.contains("WAN1 is disabled"))
    );
    assert!(out.serious().all(|w| w.severity == Severity::Warning));
}

#[test]
fn a_gateway_on_a_lan_takes_no_nat_address_from_it() {
    // A router behind the LAN: the LAN's address is the firewall's own (an admin's SSH
    // session to it), not a NAT address; killing by it would cut that session.
    let xml = pfsense(&format!(
        "{}\n{}\n<gateway_group><name>g</name><item>WAN1|1|address</item><item>INNER|2|address</item></gateway_group>",
        item("WAN1", "wan", "198.51.100.254", ""),
        item("INNER", "lan", "192.0.2.254", "")
    ));
    let (out, p) = ok(&xml);
    warned(&out, "/pfsense/interfaces/lan", "address 192.0.2.1 is not taken as a NAT address");
    let inner = p.gateways.iter().find(|g| g.name == "INNER").unwrap();
    assert!(inner.states.nat_addr.is_empty());
    assert_eq!(inner.states.rt_addr, Some("192.0.2.254".parse().unwrap()));
}

/// Every fixture with each line removed in turn (an element gone, a value missing, a
/// document no longer well-formed) and cut short at many points: the importer never panics,
/// and whatever it accepts loads as a policy.
#[test]
fn damaged_configurations_never_panic_and_never_give_a_bad_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut tried = 0;
    let mut accepted = 0;
    for (system, sub) in [(System::PfSense, "pfsense"), (System::OpnSense, "opnsense")] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let xml = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = xml.lines().collect();
            let mut variants: Vec<String> = (0..lines.len())
                .map(|skip| {
                    let kept: Vec<&str> = lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != skip)
                        .map(|(_, l)| *l)
                        .collect();
                    kept.join("\n")
                })
                .collect();
            variants.extend(
                (1..xml.len())
                    .step_by(61)
                    .filter(|c| xml.is_char_boundary(*c))
                    .map(|c| xml[..c].to_owned()),
            );
            for v in &variants {
                tried += 1;
                if let Ok(out) = import(system, v, "damaged.xml") {
                    accepted += 1;
                    if let Err(e) = statecull_policy::load::parse(&out.policy, "out.toml") {
                        panic!(
                            "{}: accepted a variant whose policy does not load: {e}\n{v}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    assert!(tried > 500 && accepted > 100, "tried {tried}, accepted {accepted}");
}

#[test]
fn a_device_name_statecull_cannot_use_skips_the_gateway() {
    let xml = format!(
        "<pfsense><interfaces><wan><enable/><if>averyveryverylongdevice0</if><ipaddr>198.51.100.1</ipaddr>\
         <gateway>WAN1</gateway></wan><opt1><enable/><if>igb1</if><ipaddr>203.0.113.1</ipaddr>\
         <gateway>WAN2</gateway></opt1></interfaces><gateways>{}{}</gateways></pfsense>",
        item("WAN1", "wan", "198.51.100.254", ""),
        item("WAN2", "opt1", "203.0.113.254", "")
    );
    let (out, p) = ok(&xml);
    warned(&out, "/pfsense/interfaces/wan/if", "gateway WAN1 skipped");
    assert_eq!(p.gateways.len(), 1);
}

#[test]
fn a_static_next_hop_on_a_dhcp_interface_takes_the_interfaces_nat_addresses() {
    let xml = format!(
        "<opnsense><interfaces><wan><enable>1</enable><if>igb0</if><ipaddr>dhcp</ipaddr></wan>\
         </interfaces><gateways>{}</gateways></opnsense>",
        item("WAN1", "wan", "198.51.100.254", "")
    );
    let out = import(System::OpnSense, &xml, "config.xml").unwrap();
    let p = statecull_policy::load::parse(&out.policy, "out.toml").unwrap();
    assert_eq!(p.gateways[0].address, "198.51.100.254".parse::<std::net::IpAddr>().unwrap());
    // No placeholder to replace: the engine follows igb0's addresses; a note says so.
    assert!(p.gateways[0].states.nat_from_interface && p.gateways[0].states.nat_addr.is_empty());
    assert!(!out.policy.contains("nat_addr = [\"240."), "{}", out.policy);
    assert!(
        out.warnings.iter().any(|w| w.path.contains("/opnsense/interfaces/wan")
            && w.message
                .contains("nat_addr = \"interface\" has the engine follow igb0's addresses")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn trigger_levels_are_translated_and_an_unknown_one_is_warned_about() {
    use statecull_policy::model::Trigger;
    let group = |t: &str| {
        format!(
            "<gateway_group><name>g</name><item>WAN1|1|address</item>\
             <item>WAN2|2|address</item><trigger>{t}</trigger></gateway_group>"
        )
    };
    for (level, trigger) in [
        ("down", Trigger::Down),
        ("downloss", Trigger::Loss),
        ("downlatency", Trigger::Latency),
        ("downlosslatency", Trigger::LossOrLatency),
    ] {
        let (out, p) = ok(&two_wans("", "", &group(level)));
        assert_eq!(p.groups[0].trigger, trigger, "{level}\n{}", out.policy);
        assert!(!out.warnings.iter().any(|w| w.path.contains("trigger")), "{level}");
        if trigger != Trigger::Down {
            assert!(out.policy.contains(&format!("trigger = \"{}\"", trigger.name())));
            assert!(out.policy.contains("where pfSense waits for its high threshold"));
        }
    }
    let (out, p) = ok(&two_wans("", "", &group("sometimes")));
    warned(&out, "gateway_group/trigger", "unknown trigger level \"sometimes\"");
    assert_eq!(p.groups[0].trigger, Trigger::Down);
}
