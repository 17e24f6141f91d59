//! The policy loader: the shipped examples parse, every kind of mistake is reported with
//! the right line and field path, defaults are applied, and `explain` says what it should.
// clippy.toml allows these inside #[test] functions only; the shared helpers below assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use statecull_policy::PolicyError;
use statecull_policy::load::{explain, parse, warnings};
use statecull_policy::model::{
    HealthSource, OnDown, OnRecovery, Policy, RoutingConfirm, StatesRefresh,
};
use statecull_proto::{AddressFamily, MarkMatch, PortRange, ipproto};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example(name: &str) -> Policy {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    match parse(&text, &path.display().to_string()) {
        Ok(p) => p,
        Err(e) => panic!("{name} does not parse: {e}"),
    }
}

/// `explain` wraps long lines; compare text with whitespace runs collapsed.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// --- the examples -------------------------------------------------------------------------

#[test]
fn every_example_parses_and_explains_without_warnings() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = parse(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        let text = explain(&policy);
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        assert!(longest <= 100, "{}: a line of {longest} characters:\n{text}", path.display());
        for g in &policy.gateways {
            assert!(
                text.contains(&g.name),
                "{}: explain omits {}:\n{text}",
                path.display(),
                g.name
            );
        }
        assert_eq!(warnings(&policy), Vec::<String>::new(), "{}", path.display());
        assert!(text.contains("No warnings."), "{text}");
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["linux-mwan-three-wan.toml", "load-balanced.toml", "pfsense-two-wan.toml"]);
}

#[test]
fn pfsense_example_reads_as_intended() {
    let p = example("pfsense-two-wan.toml");
    let names: Vec<_> = p.gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["WAN1", "WAN2"]);
    let [wan1, wan2] = &p.gateways[..] else { panic!("two gateways") };
    assert!(
        matches!(&wan1.source, HealthSource::Dpinger { socket } if socket.starts_with("/var/run/dpinger_WAN1~")),
        "{:?}",
        wan1.source
    );
    assert_eq!(wan2.source, HealthSource::Icmp);
    assert_eq!(wan2.monitor, [ip("203.0.113.254"), ip("192.0.2.54")]);
    assert_eq!(wan1.states.rt_addr, Some(ip("198.51.100.254")));
    assert_eq!(wan1.states.nat_addr, [ip("198.51.100.1")]);
    assert_eq!(wan1.states.interface.as_ref().map(|i| i.0.as_str()), Some("igb0"));
    assert_eq!(wan2.health.hold_down, Duration::from_secs(30));
    assert_eq!(wan2.health.damping.half_life, Duration::from_secs(120));
    assert_eq!(wan2.health.damping.suppress_above, 2500.0);
    let group = &p.groups[0];
    assert_eq!(group.on_recovery, OnRecovery::KillUnprotected);
    assert_eq!(group.on_down, OnDown::Gateway);
    let tiers: Vec<_> = group.members.iter().map(|m| (m.gateway, m.tier)).collect();
    assert_eq!(tiers, [(0, 1), (1, 2)]);
    assert_eq!(p.routing.confirm, RoutingConfirm::PfRuleset);
    assert_eq!(p.routing.settle_timeout, Duration::from_secs(30));
    let rtp = &p.protected[1];
    assert_eq!(rtp.proto, Some(ipproto::UDP));
    assert_eq!(rtp.ports, [PortRange { first: 10000, last: 20000 }]);
    assert_eq!(rtp.prefixes[0].to_string(), "198.18.20.0/24");
    assert_eq!(p.engine.metrics_listen.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9771"));
}

#[test]
fn linux_example_reads_as_intended() {
    let p = example("linux-mwan-three-wan.toml");
    let marks: Vec<_> = p.gateways.iter().map(|g| g.states.mark).collect();
    // mwan3's marks: interfaces 1..3 under its default mask 0x3f00.
    let want = |value| Some(MarkMatch { value, mask: 0x3f00 });
    assert_eq!(marks, [want(0x100), want(0x200), want(0x300)]);
    for g in &p.gateways {
        let families: Vec<_> = g.states.nat_addr.iter().map(AddressFamily::of).collect();
        assert_eq!(families, [AddressFamily::Ipv4, AddressFamily::Ipv6], "{}", g.name);
    }
    let tiers: Vec<_> = p.groups[0].members.iter().map(|m| m.tier).collect();
    assert_eq!(tiers, [1, 2, 3]);
    assert_eq!(p.routing.confirm, RoutingConfirm::Rtnetlink);
    let lte = &p.gateways[2];
    assert_eq!((lte.health.window, lte.health.min_samples), (15, 5));
    assert_eq!(lte.health.latency_degraded, Duration::from_millis(1500));
}

#[test]
fn load_balanced_example_has_two_tier_one_members() {
    let p = example("load-balanced.toml");
    let tiers: Vec<_> = p.groups[0].members.iter().map(|m| m.tier).collect();
    assert_eq!(tiers, [1, 1, 2]);
    let text = flat(&explain(&p));
    assert!(text.contains("tier 1: dsl1, dsl2 (sharing the load)"), "{text}");
    assert!(text.contains("tier 2: sat"), "{text}");
}

// --- errors -------------------------------------------------------------------------------

/// A valid two-gateway policy; cases replace or append whole lines (1-based line numbers
/// as written in the comments).
const BASE: &[&str] = &[
    "[[gateway]]",                                                                    // 1
    "name = \"WAN1\"",                                                                // 2
    "interface = \"em0\"",                                                            // 3
    "address = \"198.51.100.254\"",                                                   // 4
    "monitor = [\"198.51.100.254\", \"192.0.2.53\"]",                                 // 5
    "",                                                                               // 6
    "[gateway.states]",                                                               // 7
    "rt_addr = \"198.51.100.254\"",                                                   // 8
    "nat_addr = [\"198.51.100.1\"]",                                                  // 9
    "interface = \"em0\"",                                                            // 10
    "",                                                                               // 11
    "[[gateway]]",                                                                    // 12
    "name = \"WAN2\"",                                                                // 13
    "interface = \"em1\"",                                                            // 14
    "address = \"203.0.113.254\"",                                                    // 15
    "monitor = [\"203.0.113.254\", \"192.0.2.54\"]",                                  // 16
    "",                                                                               // 17
    "[gateway.states]",                                                               // 18
    "rt_addr = \"203.0.113.254\"",                                                    // 19
    "nat_addr = [\"203.0.113.1\"]",                                                   // 20
    "interface = \"em1\"",                                                            // 21
    "",                                                                               // 22
    "[[group]]",                                                                      // 23
    "name = \"failover\"",                                                            // 24
    "members = [{ gateway = \"WAN1\", tier = 1 }, { gateway = \"WAN2\", tier = 2 }]", // 25
    "on_recovery = \"kill-unprotected\"",                                             // 26
    "",                                                                               // 27
    "[[protect]]",                                                                    // 28
    "name = \"sip\"",                                                                 // 29
    "proto = \"udp\"",                                                                // 30
    "ports = [5060]",                                                                 // 31
];

/// BASE with line `n` replaced by `text` (which may hold several lines); `n` past the end
/// appends.
fn with(edits: &[(usize, &str)]) -> String {
    let mut lines: Vec<String> = BASE.iter().map(|l| (*l).to_owned()).collect();
    for (n, text) in edits {
        if *n <= lines.len() {
            lines[n - 1] = (*text).to_owned();
        } else {
            lines.push((*text).to_owned());
        }
    }
    lines.join("\n") + "\n"
}

const END: usize = 100;

struct Case {
    what: &'static str,
    text: String,
    line: usize,
    field: &'static str,
    message: &'static str,
}

fn case(
    what: &'static str,
    text: String,
    line: usize,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case { what, text, line, field, message }
}

fn cases() -> Vec<Case> {
    vec![
        case("base is valid", with(&[]), 0, "", ""),
        case("nat_addr = interface", with(&[(9, "nat_addr = \"interface\"")]), 0, "", ""),
        case(
            "nat_addr = interface alone",
            with(&[(8, ""), (9, "nat_addr = \"interface\""), (10, "")]),
            0,
            "",
            "",
        ),
        case(
            "nat_addr = [interface, address]",
            with(&[(9, "nat_addr = [\"interface\", \"198.51.100.9\"]")]),
            0,
            "",
            "",
        ),
        case(
            "interface listed twice",
            with(&[(9, "nat_addr = [\"interface\", \"interface\"]")]),
            9,
            "gateway[1].states.nat_addr[2]",
            "\"interface\" is listed twice",
        ),
        case(
            "nat_addr word other than interface",
            with(&[(9, "nat_addr = \"dhcp\"")]),
            9,
            "gateway[1].states.nat_addr",
            "expected a list of the gateway's SNAT addresses",
        ),
        case(
            "nat_addr of another type",
            with(&[(9, "nat_addr = 1")]),
            9,
            "gateway[1].states.nat_addr",
            "a list of addresses, or \"interface\"",
        ),
        case(
            "two gateways take the addresses of one interface",
            with(&[
                (9, "nat_addr = \"interface\""),
                (14, "interface = \"em0\""),
                (20, "nat_addr = \"interface\""),
                (21, ""),
            ]),
            20,
            "gateway[2].states.nat_addr",
            "gateways WAN1 (line 9) and WAN2 both take their NAT addresses from interface em0",
        ),
        // Unknown keys, at every level.
        case(
            "unknown top-level key",
            format!("gateways = 1\n{}", with(&[])),
            1,
            "gateways",
            "unknown field `gateways`, expected one of `engine`, `routing`, `gateway`, `group`, \
             `protect`; did you mean `gateway`?",
        ),
        // A key after [[protect]] belongs to the protect table, and the path says so.
        case(
            "unknown key in the last table",
            with(&[(END, "gateways = 1")]),
            32,
            "protect[1].gateways",
            "expected one of `name`, `proto`, `ports`, `prefixes`",
        ),
        case(
            "unknown top-level table",
            with(&[(END, "[routes]\nconfirm = \"delay\"")]),
            32,
            "routes",
            "unknown field `routes`",
        ),
        case(
            "unknown gateway key",
            with(&[(15, "adress = \"203.0.113.254\"")]),
            15,
            "gateway[2].adress",
            "unknown field `adress`, expected one of `name`, `interface`, `address`",
        ),
        case(
            "misspelt key gets a suggestion",
            with(&[(15, "adress = \"203.0.113.254\"")]),
            15,
            "gateway[2].adress",
            "`damping`, `states`; did you mean `address`?",
        ),
        case(
            "unknown key in gateway.states",
            with(&[(20, "nat = [\"203.0.113.1\"]")]),
            20,
            "gateway[2].states.nat",
            "unknown field `nat`",
        ),
        case(
            "unknown key in an inline member",
            with(&[(
                25,
                "members = [{ gateway = \"WAN1\", tier = 1 }, { gateway = \"WAN2\", weight = 2 }]",
            )]),
            25,
            "group[1].members[2].weight",
            "unknown field `weight`",
        ),
        case(
            "unknown key in damping",
            with(&[(6, "[gateway.damping]\nhalflife = \"1m\"")]),
            7,
            "gateway[1].damping.halflife",
            "unknown field `halflife`",
        ),
        case(
            "unknown key in engine",
            with(&[(END, "[engine]\nsocket = \"/x\"")]),
            33,
            "engine.socket",
            "unknown field `socket`",
        ),
        // Types serde checks.
        case(
            "name is not a string",
            with(&[(13, "name = 2")]),
            13,
            "gateway[2].name",
            "expected a string",
        ),
        case(
            "monitor is not a list",
            with(&[(5, "monitor = \"192.0.2.53\"")]),
            5,
            "gateway[1].monitor",
            "write a list",
        ),
        case(
            "syntax error",
            with(&[(14, "interface = \"em1")]),
            14,
            "gateway[2].interface",
            "invalid basic string",
        ),
        // Required parts.
        case(
            "no gateway",
            "[routing]\nconfirm = \"delay\"\n".to_owned(),
            1,
            "gateway",
            "names no gateway",
        ),
        case("gateway without name", with(&[(13, "")]), 12, "gateway[2]", "needs a name"),
        case("gateway without interface", with(&[(14, "")]), 12, "gateway[2]", "no interface"),
        case(
            "gateway without states table",
            with(&[(18, ""), (19, ""), (20, ""), (21, "")]),
            12,
            "gateway[2].states",
            "no [gateway.states] table",
        ),
        case(
            "states table without recogniser",
            with(&[(19, ""), (20, ""), (21, "")]),
            18,
            "gateway[2].states",
            "sets no recogniser",
        ),
        case(
            "states.interface without nat_addr",
            with(&[(20, "")]),
            21,
            "gateway[2].states.interface",
            "needs nat_addr",
        ),
        // Addresses and families.
        case(
            "bad address",
            with(&[(15, "address = \"203.0.113.300\"")]),
            15,
            "gateway[2].address",
            "\"203.0.113.300\" is not an IP address",
        ),
        case(
            "prefix for an address",
            with(&[(4, "address = \"198.51.100.0/24\"")]),
            4,
            "gateway[1].address",
            "not a prefix",
        ),
        case(
            "multicast address",
            with(&[(8, "rt_addr = \"224.0.0.1\"")]),
            8,
            "gateway[1].states.rt_addr",
            "not a unicast address",
        ),
        case(
            "family disagrees with address",
            with(&[(END, "")]).replace(
                "address = \"203.0.113.254\"",
                "address = \"203.0.113.254\"\nfamily = \"inet6\"",
            ),
            16,
            "gateway[2].family",
            "does not agree with address",
        ),
        case(
            "monitor of the other family",
            with(&[(16, "monitor = [\"203.0.113.254\", \"2001:db8::53\"]")]),
            16,
            "gateway[2].monitor[2]",
            "2001:db8::53 is IPv6 but gateway \"WAN2\" is IPv4",
        ),
        case(
            "rt_addr of the other family",
            with(&[(19, "rt_addr = \"2001:db8::1\"")]),
            19,
            "gateway[2].states.rt_addr",
            "is IPv6",
        ),
        case(
            "bad interface name",
            with(&[(14, "interface = \"a-very-long-interface-name\"")]),
            14,
            "gateway[2].interface",
            "longer than 15 bytes",
        ),
        // Names.
        case(
            "duplicate gateway name",
            with(&[(13, "name = \"WAN1\"")]),
            13,
            "gateway[2].name",
            "gateway name \"WAN1\" is already used on line 2",
        ),
        case(
            "gateway names differing in case",
            with(&[(13, "name = \"wan1\"")]),
            13,
            "gateway[2].name",
            "differs only in case from \"WAN1\" on line 2",
        ),
        case(
            "duplicate group name",
            with(&[(
                END,
                "[[group]]\nname = \"failover\"\nmembers = [{ gateway = \"WAN1\", tier = 1 }]",
            )]),
            33,
            "group[2].name",
            "group name \"failover\" is already used on line 24",
        ),
        case(
            "duplicate protect name",
            with(&[(END, "[[protect]]\nname = \"sip\"\nproto = \"tcp\"")]),
            33,
            "protect[2].name",
            "protected flow name \"sip\" is already used on line 29",
        ),
        case(
            "name with a space",
            with(&[(2, "name = \"WAN 1\"")]),
            2,
            "gateway[1].name",
            "letters, digits",
        ),
        case("empty name", with(&[(24, "name = \"\"")]), 24, "group[1].name", "is empty"),
        // Groups.
        case(
            "unknown gateway in a group",
            with(&[(
                25,
                "members = [{ gateway = \"WAN1\", tier = 1 }, { gateway = \"WAN3\", tier = 2 }]",
            )]),
            25,
            "group[1].members[2].gateway",
            "unknown gateway \"WAN3\" in group \"failover\" (gateways: WAN1, WAN2)",
        ),
        case(
            "gateway twice in a group",
            with(&[(
                25,
                "members = [{ gateway = \"WAN1\", tier = 1 }, { gateway = \"WAN1\", tier = 2 }]",
            )]),
            25,
            "group[1].members[2].gateway",
            "listed twice",
        ),
        case(
            "empty group",
            with(&[(25, "members = []")]),
            25,
            "group[1].members",
            "has no members",
        ),
        case(
            "group without members key",
            with(&[(25, "")]),
            23,
            "group[1].members",
            "has no members",
        ),
        case(
            "tier out of range",
            with(&[(25, "members = [{ gateway = \"WAN1\", tier = 16 }]")]),
            25,
            "group[1].members[1].tier",
            "expected a whole number 1..=15",
        ),
        case(
            "member without tier",
            with(&[(25, "members = [{ gateway = \"WAN1\" }]")]),
            25,
            "group[1].members[1]",
            "needs a tier",
        ),
        case(
            "bad on_recovery",
            with(&[(26, "on_recovery = \"kill_unprotected\"")]),
            26,
            "group[1].on_recovery",
            "expected \"keep\"",
        ),
        // Thresholds and durations.
        case(
            "loss_up above loss_degraded",
            with(&[(END, "")]).replacen(
                "monitor = [\"198.51.100.254\", \"192.0.2.53\"]",
                "monitor = [\"198.51.100.254\", \"192.0.2.53\"]\nloss_up = \"15%\"",
                1,
            ),
            6,
            "gateway[1].loss_up",
            "loss_up (15%) must be below loss_degraded (10%, the default)",
        ),
        case(
            "loss_down below loss_degraded",
            with(&[(6, "loss_degraded = \"30%\"\nloss_down = \"25%\"")]),
            7,
            "gateway[1].loss_down",
            "loss_degraded (30%) must be at most loss_down (25%)",
        ),
        case(
            "percentage above 100",
            with(&[(6, "loss_down = \"120%\"")]),
            6,
            "gateway[1].loss_down",
            "out of range",
        ),
        case(
            "percentage without %",
            with(&[(6, "loss_down = \"20\"")]),
            6,
            "gateway[1].loss_down",
            "expected a percentage like \"20%\"",
        ),
        case(
            "latency_up not below latency_degraded",
            with(&[(6, "latency_up = \"500ms\"")]),
            6,
            "gateway[1].latency_up",
            "latency_up (500ms) must be below latency_degraded (500ms, the default)",
        ),
        case(
            "latency_degraded not below timeout",
            with(&[(6, "latency_degraded = \"2s\"\nlatency_up = \"1s\"")]),
            6,
            "gateway[1].latency_degraded",
            "must be below probe_timeout",
        ),
        case(
            "damping that would never reuse",
            with(&[(6, "[gateway.damping]\nreuse_below = 0")]),
            7,
            "gateway[1].damping.reuse_below",
            "must be above 0: a penalty never decays to 0",
        ),
        case(
            "damping out of order",
            with(&[(6, "[gateway.damping]\nreuse_below = 3000")]),
            7,
            "gateway[1].damping.reuse_below",
            "reuse_below (3000) must be below suppress_above (2000, the default)",
        ),
        case(
            "duration without unit",
            with(&[(6, "probe_interval = \"500\"")]),
            6,
            "gateway[1].probe_interval",
            "no unit",
        ),
        case(
            "duration as a bare number",
            with(&[(6, "hold_down = 10")]),
            6,
            "gateway[1].hold_down",
            "write a quoted duration such as \"10s\"",
        ),
        case(
            "duration with a bad unit",
            with(&[(6, "hold_down = \"10 seconds\"")]),
            6,
            "gateway[1].hold_down",
            "expected a duration like \"500ms\"",
        ),
        case(
            "negative duration",
            with(&[(6, "hold_down = \"-1s\"")]),
            6,
            "gateway[1].hold_down",
            "cannot be negative",
        ),
        case(
            "zero probe interval",
            with(&[(6, "probe_interval = \"0s\"")]),
            6,
            "gateway[1].probe_interval",
            "between 10ms and 1m",
        ),
        case(
            "absurd duration",
            with(&[(END, "[routing]\nsweep_delay = \"2h\"")]),
            33,
            "routing.sweep_delay",
            "at most 1h",
        ),
        case(
            "sub-millisecond duration",
            with(&[(6, "probe_timeout = \"1.0005s\"")]),
            6,
            "gateway[1].probe_timeout",
            "whole number of milliseconds",
        ),
        case(
            "min_samples above window",
            with(&[(6, "window = 4\nmin_samples = 5")]),
            7,
            "gateway[1].min_samples",
            "expected a whole number 1..=4",
        ),
        // Marks and recognisers.
        case(
            "mark value outside the mask",
            with(&[(8, "mark = \"0x100/0xff\"")]),
            8,
            "gateway[1].states.mark",
            "bits outside the mask",
        ),
        case(
            "mark mask zero",
            with(&[(8, "mark = \"0x0/0x0\"")]),
            8,
            "gateway[1].states.mark",
            "mask 0",
        ),
        case(
            "mark not a number",
            with(&[(8, "mark = \"blue\"")]),
            8,
            "gateway[1].states.mark",
            "expected a conntrack mark like \"0x1/0xff\"",
        ),
        case(
            "overlapping marks",
            with(&[(8, "mark = \"0x1/0xff\""), (19, "mark = \"0x1/0x3\"")]),
            19,
            "gateway[2].states.mark",
            "overlaps gateway \"WAN1\"'s mark 0x1/0xff (line 1)",
        ),
        case(
            "same rt_addr on two gateways",
            with(&[(19, "rt_addr = \"198.51.100.254\"")]),
            19,
            "gateway[2].states.rt_addr",
            "same rt_addr",
        ),
        case(
            "same NAT address on two gateways",
            with(&[(20, "nat_addr = [\"198.51.100.1\"]"), (21, "")]),
            20,
            "gateway[2].states.nat_addr[1]",
            "shares NAT address",
        ),
        // Health sources.
        case(
            "dpinger without socket",
            with(&[(5, "health_source = \"dpinger\"")]),
            5,
            "gateway[1].health_source",
            "names no socket",
        ),
        case(
            "monitor with dpinger",
            with(&[(
                6,
                "health_source = \"dpinger\"\ndpinger_socket = \"/var/run/dpinger_WAN1.sock\"",
            )]),
            5,
            "gateway[1].monitor",
            "only with health_source = \"icmp\"",
        ),
        case(
            "socket without dpinger",
            with(&[(6, "dpinger_socket = \"/var/run/d.sock\"")]),
            6,
            "gateway[1].dpinger_socket",
            "only with health_source = \"dpinger\"",
        ),
        case(
            "unknown health source",
            with(&[(6, "health_source = \"ping\"")]),
            6,
            "gateway[1].health_source",
            "unknown health source \"ping\"",
        ),
        // Protected flows.
        case(
            "empty protect",
            with(&[(30, ""), (31, "")]),
            28,
            "protect[1]",
            "gives no proto, ports or prefixes",
        ),
        case(
            "protect with only empty lists",
            with(&[(30, "ports = []"), (31, "")]),
            30,
            "protect[1].ports",
            "ports is empty",
        ),
        case(
            "ports on icmp",
            with(&[(30, "proto = \"icmp\"")]),
            31,
            "protect[1].ports",
            "icmp has no ports",
        ),
        case(
            "bad port range",
            with(&[(31, "ports = [5060, \"20000-10000\"]")]),
            31,
            "protect[1].ports[2]",
            "the first port is above the last",
        ),
        case(
            "port out of range",
            with(&[(31, "ports = [70000]")]),
            31,
            "protect[1].ports[1]",
            "not a port",
        ),
        case(
            "prefix with host bits",
            with(&[(31, "prefixes = [\"192.0.2.1/24\"]")]),
            31,
            "protect[1].prefixes[1]",
            "did you mean 192.0.2.0/24",
        ),
        case(
            "unknown protocol",
            with(&[(30, "proto = \"quic\"")]),
            30,
            "protect[1].proto",
            "unknown protocol \"quic\"",
        ),
        // Engine and routing.
        case(
            "bad metrics address",
            with(&[(END, "[engine]\nmetrics_listen = \"localhost\"")]),
            33,
            "engine.metrics_listen",
            "is not ADDR:PORT",
        ),
        case(
            "relative socket path",
            with(&[(END, "[engine]\nbroker_socket = \"broker.sock\"")]),
            33,
            "engine.broker_socket",
            "not an absolute path",
        ),
        case(
            "states refresh: an unknown word",
            with(&[(END, "[engine]\nstates_refresh = \"sometimes\"")]),
            33,
            "engine.states_refresh",
            "\"sometimes\" is not a refresh setting; expected \"auto\"",
        ),
        case(
            "states refresh: a boolean",
            with(&[(END, "[engine]\nstates_refresh = false")]),
            33,
            "engine.states_refresh",
            "boolean false is not a refresh setting; expected \"auto\" (adaptive, the default), \"off\"",
        ),
        case(
            "states refresh: a bare number",
            with(&[(END, "[engine]\nstates_refresh = 15")]),
            33,
            "engine.states_refresh",
            "a bare number has no unit",
        ),
        case(
            "states refresh: too often",
            with(&[(END, "[engine]\nstates_refresh = \"500ms\"")]),
            33,
            "engine.states_refresh",
            "500ms is out of range; states_refresh must be between 1s and 24h",
        ),
        case(
            "states refresh: an unknown unit",
            with(&[(END, "[engine]\nstates_refresh = \"5 fortnights\"")]),
            33,
            "engine.states_refresh",
            "unknown unit",
        ),
        case(
            "unknown confirmation",
            with(&[(END, "[routing]\nconfirm = \"netlink\"")]),
            33,
            "routing.confirm",
            "expected \"rtnetlink\"",
        ),
    ]
}

#[test]
fn errors_name_line_field_and_teach() {
    let mut failures = Vec::new();
    for c in cases() {
        let result = parse(&c.text, "t.toml");
        if c.line == 0 {
            if let Err(e) = result {
                failures.push(format!("{}: expected success, got {e}", c.what));
            }
            continue;
        }
        match result {
            Ok(_) => failures.push(format!("{}: parsed, expected an error", c.what)),
            Err(PolicyError::Invalid { file, line, field, message }) => {
                let ok = file == "t.toml"
                    && line == Some(c.line)
                    && field.as_deref() == Some(c.field)
                    && message.contains(c.message);
                if !ok {
                    failures.push(format!(
                        "{}: want line {} field {} message ~{:?}\n     got line {line:?} field {field:?} message {message:?}",
                        c.what, c.line, c.field, c.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: wrong error kind {other}", c.what)),
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn error_display_names_file_line_and_field() {
    let text = with(&[(15, "address = \"nope\"")]);
    let e = parse(&text, "/etc/statecull/policy.toml").unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("/etc/statecull/policy.toml:15: gateway[2].address: "), "{shown}");
}

#[test]
fn no_suggestion_for_a_key_unlike_any() {
    let text = with(&[(
        25,
        "members = [{ gateway = \"WAN1\", tier = 1 }, { gateway = \"WAN2\", weight = 2 }]",
    )]);
    let e = parse(&text, "t.toml").unwrap_err().to_string();
    assert!(e.contains("unknown field `weight`") && !e.contains("did you mean"), "{e}");
}

#[test]
fn unknown_gateway_suggests_a_case_fix() {
    let text = with(&[(25, "members = [{ gateway = \"wan2\", tier = 1 }]")]);
    let e = parse(&text, "t.toml").unwrap_err().to_string();
    assert!(e.contains("did you mean \"WAN2\""), "{e}");
}

// --- defaults and normalisation -----------------------------------------------------------

const MINIMAL: &str = r#"
[[gateway]]
name = "WAN1"
interface = "eth0"
address = "2001:db8:1::1"

[gateway.states]
nat_addr = ["2001:db8:1::10"]
"#;

#[test]
fn defaults_are_applied() {
    let p = parse(MINIMAL, "<string>").unwrap();
    assert_eq!(p.source, "<string>");
    let g = &p.gateways[0];
    assert_eq!(g.family, AddressFamily::Ipv6);
    assert_eq!(g.monitor, [ip("2001:db8:1::1")]);
    assert_eq!(g.probe_source, None);
    assert_eq!(g.source, HealthSource::Icmp);
    assert_eq!(g.probe_interval, Duration::from_millis(500));
    assert_eq!(g.probe_timeout, Duration::from_secs(1));
    let h = &g.health;
    assert_eq!((h.window, h.min_samples), (20, 5));
    assert_eq!((h.loss_down_pct, h.loss_degraded_pct, h.loss_up_pct), (20.0, 10.0, 5.0));
    assert_eq!(
        (h.latency_degraded, h.latency_up),
        (Duration::from_millis(500), Duration::from_millis(250))
    );
    assert_eq!(h.hold_down, Duration::from_secs(10));
    let d = &h.damping;
    assert!(d.enabled);
    assert_eq!(
        (d.penalty, d.suppress_above, d.reuse_below, d.max_penalty),
        (1000.0, 2000.0, 750.0, 6000.0)
    );
    assert_eq!(d.half_life, Duration::from_secs(60));
    assert_eq!(g.states.rt_addr, None);
    assert_eq!(g.states.mark, None);
    assert_eq!(g.states.interface, None);
    assert_eq!(p.routing.confirm, RoutingConfirm::Rtnetlink);
    assert_eq!(p.routing.settle_timeout, Duration::from_secs(5));
    assert_eq!(p.routing.sweep_delay, Duration::from_secs(2));
    assert_eq!(p.engine.broker_socket, None);
    assert_eq!(p.engine.metrics_listen, None);
    assert_eq!(p.engine.states_refresh, StatesRefresh::Auto);
    assert!(p.groups.is_empty() && p.protected.is_empty());
}

/// `[engine] states_refresh`: its three forms, what each means per backend, and what
/// `check-policy` says about it.
#[test]
fn states_refresh_forms_and_their_minimums() {
    use statecull_proto::BackendKind::{Conntrack, Pf, PfModel};
    let table: [(&str, StatesRefresh, [Option<Duration>; 3], &str); 5] = [
        (
            "",
            StatesRefresh::Auto,
            [
                Some(Duration::from_secs(15)),
                Some(Duration::from_secs(600)),
                Some(Duration::from_secs(600)),
            ],
            "counted in the background, adaptively: the next count waits at least 100 times as \
             long as the last one took, so counting costs the broker at most 1% of one core; and \
             no more often than every 15s on conntrack, or every 10m on pf",
        ),
        (
            "states_refresh = \"auto\"",
            StatesRefresh::Auto,
            [
                Some(Duration::from_secs(15)),
                Some(Duration::from_secs(600)),
                Some(Duration::from_secs(600)),
            ],
            "no more often than every 15s on conntrack, or every 10m on pf, where a count exports \
             every state",
        ),
        (
            "states_refresh = \"off\"",
            StatesRefresh::Off,
            [None, None, None],
            "not counted (states_refresh = \"off\"): status and metrics show no state counts",
        ),
        (
            "states_refresh = \"1m\"",
            StatesRefresh::AtMostEvery(Duration::from_secs(60)),
            [Some(Duration::from_secs(60)); 3],
            "counted in the background at most every 1m, and less often when counts are slow: \
             the next count waits at least 100 times as long as the last one took",
        ),
        (
            "states_refresh = \"24h\"",
            StatesRefresh::AtMostEvery(Duration::from_secs(24 * 3600)),
            [Some(Duration::from_secs(24 * 3600)); 3],
            "at most every 24h",
        ),
    ];
    for (line, want, minimums, said) in table {
        let text = with(&[(END, &format!("[engine]\n{line}"))]);
        let p = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(p.engine.states_refresh, want, "{line}");
        let got = [Conntrack, Pf, PfModel].map(|b| want.minimum(b));
        assert_eq!(got, minimums, "{line}");
        let shown = flat(&explain(&p));
        assert!(shown.contains(said), "{line}: {said:?} not in:\n{shown}");
        assert!(shown.contains("States per gateway (status, metrics)"), "{shown}");
    }
    assert_eq!(StatesRefresh::BUDGET_FACTOR, 100, "1% of one core");
}

#[test]
fn group_defaults_and_member_order() {
    let text = with(&[
        (25, "members = [{ gateway = \"WAN2\", tier = 2 }, { gateway = \"WAN1\", tier = 1 }]"),
        (26, ""),
        (
            END,
            "[[group]]\nname = \"lb\"\nmembers = [{ gateway = \"WAN2\", tier = 1 }, { gateway = \"WAN1\", tier = 1 }]",
        ),
    ]);
    let p = parse(&text, "t.toml").unwrap();
    let failover = &p.groups[0];
    assert_eq!(failover.on_down, OnDown::Gateway);
    assert_eq!(failover.on_recovery, OnRecovery::Keep);
    let order =
        |i: usize| p.groups[i].members.iter().map(|m| (m.gateway, m.tier)).collect::<Vec<_>>();
    assert_eq!(order(0), [(0, 1), (1, 2)], "sorted by tier");
    assert_eq!(order(1), [(1, 1), (0, 1)], "equal tiers keep file order");
}

#[test]
fn min_samples_default_follows_a_small_window() {
    let text =
        MINIMAL.replace("address = \"2001:db8:1::1\"", "address = \"2001:db8:1::1\"\nwindow = 3");
    let p = parse(&text, "t.toml").unwrap();
    assert_eq!((p.gateways[0].health.window, p.gateways[0].health.min_samples), (3, 3));
}

#[test]
fn every_routing_confirmation_word_loads() {
    for (word, confirm, os) in [
        ("rtnetlink", RoutingConfirm::Rtnetlink, Some("linux")),
        ("route-socket", RoutingConfirm::RouteSocket, Some("freebsd")),
        ("pf-ruleset", RoutingConfirm::PfRuleset, Some("freebsd")),
        ("signal", RoutingConfirm::Signal, None),
        ("delay", RoutingConfirm::Delay, None),
    ] {
        let text = with(&[(END, &format!("[routing]\nconfirm = \"{word}\""))]);
        let p = parse(&text, "t.toml").unwrap();
        assert_eq!(p.routing.confirm, confirm);
        assert_eq!(confirm.word(), word);
        assert_eq!(confirm.os_only(), os, "{word}");
        assert!(explain(&p).contains("before killing"), "{word}");
    }
}

#[test]
fn values_in_their_other_spellings() {
    let text = MINIMAL.replace(
        "address = \"2001:db8:1::1\"",
        "address = \"2001:db8:1::1\"\nfamily = \"inet6\"\nloss_down = 25\nloss_degraded = 12.5\n\
         loss_up = \"2.5%\"\nprobe_interval = \"1.5s\"\nprobe_timeout = \"1m\"\nhold_down = \"0s\"\n\
         latency_degraded = \"2s\"\nlatency_up = \"250ms\"",
    ) + "mark = 7\n\n[[protect]]\nname = \"gre\"\nproto = 47\n";
    let p = parse(&text, "t.toml").unwrap();
    let g = &p.gateways[0];
    assert_eq!(
        (g.health.loss_down_pct, g.health.loss_degraded_pct, g.health.loss_up_pct),
        (25.0, 12.5, 2.5)
    );
    assert_eq!(g.probe_interval, Duration::from_millis(1500));
    assert_eq!(g.probe_timeout, Duration::from_secs(60));
    assert_eq!(g.health.hold_down, Duration::ZERO);
    assert_eq!(g.states.mark, Some(MarkMatch { value: 7, mask: u32::MAX }));
    assert_eq!(p.protected[0].proto, Some(ipproto::GRE));
}

// --- explain ------------------------------------------------------------------------------

#[test]
fn explain_describes_gateways_groups_and_flows() {
    let p = parse(&with(&[]), "t.toml").unwrap();
    let text = flat(&explain(&p));
    for needle in [
        "t.toml: 2 gateways, 1 group, 1 protected flow",
        "WAN1 (IPv4): next hop 198.51.100.254 on em0",
        "ICMP echo to 198.51.100.254, 192.0.2.53 every 500ms",
        "route-to gateway (rt_addr) 198.51.100.254 (pf)",
        "NAT address 203.0.113.1 on interface em1 (pf)",
        "member of: failover (tier 2)",
        "tier 1: WAN1",
        "tier 2: WAN2",
        "except protected flows (sip)",
        "sip: udp, port 5060 at either end",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn explain_warns_about_likely_mistakes() {
    let text = with(&[
        (5, ""),
        (25, "members = [{ gateway = \"WAN1\", tier = 1 }]"),
        (26, "on_down = \"all\""),
    ]);
    let p = parse(&text, "t.toml").unwrap();
    let shown = flat(&explain(&p));
    for needle in [
        "group failover has a single member: it can never fail over",
        "gateway WAN2 is in no group: it is only monitored",
        "on_down = \"all\" kills the whole state table, including the connections",
        "gateway WAN1 monitors only its next hop",
        "[[protect]] flows are spared only by on_recovery = \"kill-unprotected\"",
        "routing.confirm = \"rtnetlink\" works on Linux only",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(!shown.contains("No warnings."), "{shown}");
}

#[test]
fn explain_warns_when_gateways_have_no_group() {
    let text = with(&[(23, ""), (24, ""), (25, ""), (26, "")]);
    let p = parse(&text, "t.toml").unwrap();
    let w = warnings(&p);
    assert!(w.iter().any(|w| w.contains("2 gateways but no [[group]]")), "{w:?}");
    assert!(flat(&explain(&p)).contains("none: gateways are monitored, nothing is ever killed"));
}

// --- robustness ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text gives a policy or an error naming a line inside the text, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "[\\[\\]a-z_=\"0-9./%:{}, \n-]{0,300}") {
        if let Err(PolicyError::Invalid { line, .. }) = parse(&text, "p.toml") {
            let lines = text.lines().count().max(1);
            prop_assert!(line.is_some_and(|l| l >= 1 && l <= lines + 1), "{line:?} of {lines}");
        }
    }

    /// Damaging an example anywhere still gives an error with a line, or a valid policy.
    #[test]
    fn damaged_example_never_panics(at in 0usize..4000, len in 0usize..8, insert in "[\"=\\[\\]0-9a-z% ]{0,3}") {
        let path = examples_dir().join("pfsense-two-wan.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        let start = at.min(chars.len());
        let end = (start + len).min(chars.len());
        chars.splice(start..end, insert.chars());
        let damaged: String = chars.into_iter().collect();
        if let Err(PolicyError::Invalid { line, .. }) = parse(&damaged, "p.toml") {
            prop_assert!(line.is_some());
        }
    }
}

#[test]
fn group_trigger_levels() {
    use statecull_policy::model::Trigger;
    let text = |trigger: &str| {
        format!(
            "{MINIMAL}\n[[group]]\nname = \"g\"\nmembers = [{{ gateway = \"WAN1\", tier = 1 }}]\n{trigger}\n"
        )
    };
    assert_eq!(parse(&text(""), "<s>").unwrap().groups[0].trigger, Trigger::Down);
    for (word, t) in [
        ("down", Trigger::Down),
        ("loss", Trigger::Loss),
        ("latency", Trigger::Latency),
        ("loss-or-latency", Trigger::LossOrLatency),
    ] {
        let p = parse(&text(&format!("trigger = \"{word}\"")), "<s>").unwrap();
        assert_eq!(p.groups[0].trigger, t);
        assert_eq!(t.name(), word);
        assert!(explain(&p).contains(&format!("(trigger = {word})")), "{}", explain(&p));
    }
    let err = parse(&text("trigger = \"downloss\""), "<s>").unwrap_err().to_string();
    assert!(err.contains("group[1].trigger: unknown trigger \"downloss\""), "{err}");
    assert!(err.contains("\"loss-or-latency\""), "{err}");
}

#[test]
fn a_trigger_on_an_external_only_member_is_warned_about() {
    let text = format!(
        "{}\n[[gateway]]\nname = \"WAN2\"\ninterface = \"eth1\"\naddress = \"2001:db8:2::1\"\n\
         health_source = \"external\"\n[gateway.states]\nnat_addr = [\"2001:db8:2::10\"]\n\n\
         [[group]]\nname = \"g\"\nmembers = [{{ gateway = \"WAN1\", tier = 1 }}, \
         {{ gateway = \"WAN2\", tier = 2 }}]\ntrigger = \"latency\"\n",
        MINIMAL
    );
    let p = parse(&text, "<s>").unwrap();
    let w = warnings(&p);
    assert!(
        w.iter().any(|w| w.contains(
            "group g: trigger = \"latency\", but WAN2 takes its health only from external verdicts"
        )),
        "{w:?}"
    );
    let p = parse(&text.replace("trigger = \"latency\"", "trigger = \"down\""), "<s>").unwrap();
    assert!(!warnings(&p).iter().any(|w| w.contains("trigger")));
}

/// `nat_addr = "interface"`: nothing listed in the loaded policy; the engine fills in the
/// interface's addresses when it plans, for those gateways only.
#[test]
fn interface_nat_addresses_are_filled_in_when_planning() {
    let p = parse(&with(&[(9, "nat_addr = \"interface\"")]), "t.toml").unwrap();
    assert!(p.gateways[0].states.nat_from_interface && p.gateways[0].states.nat_addr.is_empty());
    assert!(p.uses_interface_addresses());
    let explained = flat(&explain(&p));
    assert!(
        explained.contains("NAT address: whatever em0 has (followed as it changes"),
        "{explained}"
    );
    let filled = p.with_interface_addresses(|i| {
        assert_eq!(i.to_string(), "em0", "asked for WAN1's interface only");
        vec![ip("198.51.100.7"), ip("2001:db8:7::1")]
    });
    assert_eq!(filled.gateways[0].states.nat_addr, [ip("198.51.100.7"), ip("2001:db8:7::1")]);
    assert_eq!(filled.gateways[1].states.nat_addr, [ip("203.0.113.1")]);
    // A dual-stack WAN, one gateway per family: each takes its own family's addresses.
    let dual = format!(
        "{}\n[[gateway]]\nname = \"WAN1v6\"\ninterface = \"em0\"\naddress = \"2001:db8::fe\"\n\
         health_source = \"external\"\n[gateway.states]\nnat_addr = \"interface\"\n",
        with(&[(9, "nat_addr = \"interface\"")])
    );
    let p = parse(&dual, "t.toml").unwrap();
    let filled = p.with_interface_addresses(|_| vec![ip("198.51.100.7"), ip("2001:db8::7")]);
    assert_eq!(filled.gateways[0].states.nat_addr, [ip("198.51.100.7")]);
    assert_eq!(filled.gateways[2].states.nat_addr, [ip("2001:db8::7")]);
    // Listed beside "interface": kept after the interface's.
    let p = parse(&with(&[(9, "nat_addr = [\"interface\", \"198.51.100.9\"]")]), "t.toml").unwrap();
    let filled = p.with_interface_addresses(|_| vec![ip("198.51.100.7")]);
    assert_eq!(filled.gateways[0].states.nat_addr, [ip("198.51.100.7"), ip("198.51.100.9")]);
    let findings =
        statecull_policy::portability::check(&p, statecull_policy::portability::TargetOs::FreeBsd);
    assert!(
        findings.iter().any(|f| f.feature.contains("nat_addr = \"interface\"")
            && f.level == statecull_policy::portability::Level::Warning),
        "{findings:?}"
    );
}
