//! Which policy features work on which system, as one reviewed table ([`RULES`]), and the
//! check `statecull check-policy [--target-os linux|freebsd]` runs with it ([`check`]).
//!
//! A valid policy can still ask for something the target system cannot do: Linux
//! connection marks on pf, rtnetlink on FreeBSD, probes bound to an interface where the
//! system has no `SO_BINDTODEVICE`. Each [`Rule`] names one feature, the systems it works on,
//! how bad it is elsewhere ([`Level`]) and why, and a pure function that finds where a
//! policy uses it. The target system decides the state-table backend: conntrack on Linux,
//! pf on FreeBSD.
//!
//! # Adding a row
//!
//! Write a `fn(&Policy) -> Vec<String>` that returns the places (`gateway WAN1`,
//! `[routing] confirm`) where the policy uses the feature (empty: not used), and add a
//! [`Rule`] to [`RULES`] with the systems it works on, the level elsewhere and the reason.
//! A routing confirmation mode is one row per mode: match its `RoutingConfirm` variant in
//! the finder (see `confirm_rtnetlink` below; its `match` has no catch-all, so a new mode
//! does not compile until it is placed). Add a test that the row fires on the systems it
//! should and stays quiet on the others (`tests` below has one per row).

use std::fmt;

use crate::model::{HealthSource, Policy, RoutingConfirm};

/// The system a policy is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetOs {
    /// Linux: the conntrack backend.
    Linux,
    /// FreeBSD (pfSense, OPNsense): the pf backend.
    FreeBsd,
}

impl TargetOs {
    /// Every target, in the order `--target-os` lists them.
    pub const ALL: [TargetOs; 2] = [TargetOs::Linux, TargetOs::FreeBsd];

    /// `linux` or `freebsd`, as `--target-os` spells it.
    pub fn name(self) -> &'static str {
        match self {
            TargetOs::Linux => "linux",
            TargetOs::FreeBsd => "freebsd",
        }
    }
}

impl fmt::Display for TargetOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TargetOs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            format!("unknown target system {s:?}; expected \"linux\" or \"freebsd\"")
        })
    }
}

/// How much a finding matters on the target system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// It works there, given what the reason says (a start-up requirement).
    Note,
    /// It is ignored or works only partly there: the engine runs, but not as written.
    Warning,
    /// It can never work there: `check-policy` fails.
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Note => "note",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One row of the table: a feature, where it works, and what happens elsewhere.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The feature as the policy spells it.
    pub feature: &'static str,
    /// The systems on which it needs no finding: it works as written, with nothing more to
    /// do. (A note row lists the systems where its requirement does not apply.)
    pub works_on: &'static [TargetOs],
    /// On the other systems: how bad it is.
    pub elsewhere: Level,
    /// Why, and what to do instead, in one or two sentences.
    pub reason: &'static str,
    /// Where a policy uses the feature (empty: it does not).
    pub used_at: fn(&Policy) -> Vec<String>,
}

/// One finding of [`check`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub level: Level,
    pub feature: &'static str,
    /// Where the policy uses it (`gateway WAN1`, `[routing] confirm`).
    pub at: String,
    pub reason: &'static str,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}: {}", self.level.name(), self.at, self.feature, self.reason)
    }
}

const LINUX: &[TargetOs] = &[TargetOs::Linux];
const FREEBSD: &[TargetOs] = &[TargetOs::FreeBsd];

/// The reviewed table. Rows whose `works_on` lists every system are notes: requirements
/// that hold on the systems *not* listed are written as separate rows.
pub const RULES: &[Rule] = &[
    Rule {
        feature: "confirm = \"rtnetlink\"",
        works_on: LINUX,
        elsewhere: Level::Error,
        reason: "rtnetlink is Linux's routing socket; FreeBSD has none, so the engine would only \
                 ever wait out settle_timeout. On pfSense and OPNsense use confirm = \
                 \"pf-ruleset\" (they move traffic by reloading the ruleset); on a plain FreeBSD \
                 router \"route-socket\".",
        used_at: confirm_rtnetlink,
    },
    Rule {
        feature: "confirm = \"route-socket\"",
        works_on: FREEBSD,
        elsewhere: Level::Error,
        reason: "route-socket is FreeBSD's PF_ROUTE routing socket; Linux has none (its routing \
                 socket is rtnetlink): use confirm = \"rtnetlink\".",
        used_at: confirm_route_socket,
    },
    Rule {
        feature: "confirm = \"pf-ruleset\"",
        works_on: FREEBSD,
        elsewhere: Level::Error,
        reason: "pf-ruleset waits for pf's filter ruleset ticket to change; conntrack has no \
                 ruleset (the broker refuses the verb): on Linux use confirm = \"rtnetlink\".",
        used_at: confirm_pf_ruleset,
    },
    Rule {
        feature: "[gateway.states] mark as the only recogniser",
        works_on: LINUX,
        elsewhere: Level::Error,
        reason: "connection marks are conntrack's; pf states carry no such mark, so this \
                 gateway's states could never be found. Recognise them by rt_addr, or by \
                 interface + nat_addr.",
        used_at: mark_only,
    },
    Rule {
        feature: "[gateway.states] nat_addr = \"interface\"",
        works_on: LINUX,
        elsewhere: Level::Warning,
        reason: "on FreeBSD the engine reads the interfaces' addresses with getifaddrs at start \
                 and follows the routing socket's RTM_NEWADDR/RTM_DELADDR (type-checked, never \
                 run on FreeBSD); if the kernel drops routing messages (ENOBUFS) they stay \
                 stale until the next change, since capability mode cannot read them all \
                 again (a restart does). Route-to states are found by rt_addr regardless.",
        used_at: nat_from_interface,
    },
    Rule {
        feature: "[gateway.states] mark",
        works_on: LINUX,
        elsewhere: Level::Warning,
        reason: "connection marks are conntrack's: on pf the mark selectors are dropped and only \
                 the gateway's other recognisers are used.",
        used_at: mark_with_others,
    },
    Rule {
        feature: "[gateway.states] rt_addr as the only recogniser",
        works_on: FREEBSD,
        elsewhere: Level::Error,
        reason: "rt_addr is pf's route-to address; conntrack entries have none, so this \
                 gateway's states could never be found. Recognise them by mark (set per WAN by \
                 the firewall) or nat_addr.",
        used_at: rt_addr_only,
    },
    Rule {
        feature: "[gateway.states] rt_addr or interface",
        works_on: FREEBSD,
        elsewhere: Level::Warning,
        reason: "rt_addr and the state's interface are pf's; on conntrack those selectors are \
                 dropped and only mark and nat_addr are used.",
        used_at: pf_only_fields_with_others,
    },
    Rule {
        feature: "health_source = \"icmp\" (raw ICMP sockets)",
        works_on: LINUX,
        elsewhere: Level::Note,
        reason: "FreeBSD has no unprivileged ICMP sockets: the engine opens one raw socket per \
                 gateway and target while still root, then drops to its user and enters \
                 Capsicum. Start it as root with --user (the rc.d script does). On pfSense and \
                 OPNsense, dpinger's status sockets are the recommended source.",
        used_at: icmp_gateways,
    },
    Rule {
        feature: "health_source = \"icmp\" (datagram ICMP sockets)",
        works_on: FREEBSD,
        elsewhere: Level::Note,
        reason: "Linux probes use datagram ICMP sockets, which need no privilege: the engine's \
                 group must lie inside net.ipv4.ping_group_range (sandbox/profiles/sysctl.d).",
        used_at: icmp_gateways,
    },
    Rule {
        feature: "ICMP probes without probe_source",
        works_on: LINUX,
        elsewhere: Level::Warning,
        reason: "FreeBSD has no SO_BINDTODEVICE: a probe is bound to probe_source (and fib) only \
                 and leaves by the route to its target, which may be another WAN. Set \
                 probe_source to the address on the gateway's interface, and route each monitor \
                 target via its gateway (pfSense adds such host routes for dpinger) or use fib.",
        used_at: icmp_without_source,
    },
    Rule {
        feature: "fib",
        works_on: FREEBSD,
        elsewhere: Level::Warning,
        reason: "fib is FreeBSD's SO_SETFIB and is ignored on Linux, where probes are bound to \
                 the gateway's interface (SO_BINDTODEVICE) instead.",
        used_at: with_fib,
    },
    Rule {
        feature: "[engine] readable_paths",
        works_on: LINUX,
        elsewhere: Level::Warning,
        reason: "readable_paths are Landlock rules; in Capsicum's capability mode the engine \
                 opens no path at all after start-up, so they are ignored (dpinger sockets are \
                 reached through directories opened at start-up, not through this list).",
        used_at: readable_paths,
    },
];

/// Every finding of [`RULES`] for `policy` on `target`, most severe first (then table
/// order, then place).
pub fn check(policy: &Policy, target: TargetOs) -> Vec<Finding> {
    let mut out: Vec<Finding> = RULES
        .iter()
        .filter(|r| !r.works_on.contains(&target))
        .flat_map(|r| {
            (r.used_at)(policy).into_iter().map(|at| Finding {
                level: r.elsewhere,
                feature: r.feature,
                at,
                reason: r.reason,
            })
        })
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.level));
    out
}

/// Where the policy names `mode` as its routing confirmation. Every mode is placed here (no
/// catch-all), so a new mode does not compile until it has a row.
fn confirm_is(p: &Policy, mode: RoutingConfirm) -> Vec<String> {
    let os_specific = match p.routing.confirm {
        RoutingConfirm::Rtnetlink | RoutingConfirm::RouteSocket | RoutingConfirm::PfRuleset => true,
        RoutingConfirm::Signal | RoutingConfirm::Delay => false,
    };
    if os_specific && p.routing.confirm == mode {
        vec!["[routing] confirm".to_owned()]
    } else {
        Vec::new()
    }
}

fn confirm_rtnetlink(p: &Policy) -> Vec<String> {
    confirm_is(p, RoutingConfirm::Rtnetlink)
}

fn confirm_route_socket(p: &Policy) -> Vec<String> {
    confirm_is(p, RoutingConfirm::RouteSocket)
}

fn confirm_pf_ruleset(p: &Policy) -> Vec<String> {
    confirm_is(p, RoutingConfirm::PfRuleset)
}

fn gateways_where(p: &Policy, f: impl Fn(&crate::model::Gateway) -> bool) -> Vec<String> {
    p.gateways.iter().filter(|g| f(g)).map(|g| format!("gateway {}", g.name)).collect()
}

fn nat_from_interface(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| g.states.nat_from_interface)
}

/// NAT addresses, listed or the interface's.
fn has_nat(s: &crate::model::StateMatch) -> bool {
    !s.nat_addr.is_empty() || s.nat_from_interface
}

fn mark_only(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| {
        let s = &g.states;
        s.mark.is_some() && s.rt_addr.is_none() && !has_nat(s)
    })
}

fn mark_with_others(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| {
        let s = &g.states;
        s.mark.is_some() && (s.rt_addr.is_some() || has_nat(s))
    })
}

fn rt_addr_only(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| {
        let s = &g.states;
        s.rt_addr.is_some() && s.mark.is_none() && !has_nat(s)
    })
}

fn pf_only_fields_with_others(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| {
        let s = &g.states;
        (s.rt_addr.is_some() || s.interface.is_some())
            && (s.mark.is_some() || !s.nat_addr.is_empty())
    })
}

fn icmp_gateways(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| g.source == HealthSource::Icmp)
}

fn icmp_without_source(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| g.source == HealthSource::Icmp && g.probe_source.is_none())
}

fn with_fib(p: &Policy) -> Vec<String> {
    gateways_where(p, |g| g.fib.is_some())
}

fn readable_paths(p: &Policy) -> Vec<String> {
    if p.engine.readable_paths.is_empty() {
        Vec::new()
    } else {
        vec!["[engine] readable_paths".to_owned()]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A two-gateway policy: `extra_engine` goes into `[engine]`, `routing` is the confirm
    /// mode, `gw1` is WAN1's extra lines (health and states), WAN2 is external with nat_addr.
    fn policy(extra_engine: &str, confirm: &str, gw1: &str) -> Policy {
        let text = format!(
            r#"
[engine]
{extra_engine}

[routing]
confirm = "{confirm}"

[[gateway]]
name = "WAN1"
interface = "igb0"
address = "198.51.100.254"
{gw1}

[[gateway]]
name = "WAN2"
interface = "igb1"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
"#
        );
        crate::load::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const EXTERNAL_NAT: &str =
        "health_source = \"external\"\n[gateway.states]\nnat_addr = [\"198.51.100.1\"]";

    /// The features found on `target`, as "level feature at".
    fn found(p: &Policy, target: TargetOs) -> Vec<String> {
        check(p, target)
            .iter()
            .map(|f| format!("{} {} @ {}", f.level.name(), f.feature, f.at))
            .collect()
    }

    #[test]
    fn a_portable_policy_is_clean_on_both() {
        let p = policy("", "signal", EXTERNAL_NAT);
        for t in TargetOs::ALL {
            assert!(check(&p, t).is_empty(), "{t}: {:?}", check(&p, t));
        }
    }

    #[test]
    fn rtnetlink_is_an_error_on_freebsd_only() {
        let p = policy("", "rtnetlink", EXTERNAL_NAT);
        assert!(check(&p, TargetOs::Linux).is_empty());
        assert_eq!(
            found(&p, TargetOs::FreeBsd),
            ["error confirm = \"rtnetlink\" @ [routing] confirm"]
        );
        assert!(check(&policy("", "delay", EXTERNAL_NAT), TargetOs::FreeBsd).is_empty());
    }

    #[test]
    fn route_socket_and_pf_ruleset_are_errors_on_linux_only() {
        for (mode, feature) in [
            ("route-socket", "confirm = \"route-socket\""),
            ("pf-ruleset", "confirm = \"pf-ruleset\""),
        ] {
            let p = policy("", mode, EXTERNAL_NAT);
            assert!(check(&p, TargetOs::FreeBsd).is_empty(), "{mode}");
            assert_eq!(
                found(&p, TargetOs::Linux),
                [format!("error {feature} @ [routing] confirm")]
            );
        }
        for mode in ["signal", "delay"] {
            for os in TargetOs::ALL {
                assert!(check(&policy("", mode, EXTERNAL_NAT), os).is_empty(), "{mode} on {os}");
            }
        }
    }

    #[test]
    fn marks_on_pf_are_an_error_alone_and_a_warning_beside_others() {
        let alone = policy(
            "",
            "signal",
            "health_source = \"external\"\n[gateway.states]\nmark = \"0x1/0xff\"",
        );
        assert!(check(&alone, TargetOs::Linux).is_empty());
        assert_eq!(
            found(&alone, TargetOs::FreeBsd),
            ["error [gateway.states] mark as the only recogniser @ gateway WAN1"]
        );
        let beside = policy(
            "",
            "signal",
            "health_source = \"external\"\n[gateway.states]\nmark = \"0x1/0xff\"\nnat_addr = [\"198.51.100.1\"]",
        );
        assert!(check(&beside, TargetOs::Linux).is_empty());
        assert_eq!(
            found(&beside, TargetOs::FreeBsd),
            ["warning [gateway.states] mark @ gateway WAN1"]
        );
    }

    #[test]
    fn pf_fields_on_conntrack_are_an_error_alone_and_a_warning_beside_others() {
        let alone = policy(
            "",
            "signal",
            "health_source = \"external\"\n[gateway.states]\nrt_addr = \"198.51.100.254\"",
        );
        assert!(check(&alone, TargetOs::FreeBsd).is_empty());
        assert_eq!(
            found(&alone, TargetOs::Linux),
            ["error [gateway.states] rt_addr as the only recogniser @ gateway WAN1"]
        );
        let beside = policy(
            "",
            "signal",
            "health_source = \"external\"\n[gateway.states]\nnat_addr = [\"198.51.100.1\"]\ninterface = \"igb0\"",
        );
        assert!(check(&beside, TargetOs::FreeBsd).is_empty());
        assert_eq!(
            found(&beside, TargetOs::Linux),
            ["warning [gateway.states] rt_addr or interface @ gateway WAN1"]
        );
    }

    #[test]
    fn icmp_probes_say_what_each_system_needs() {
        let with_source = policy(
            "",
            "signal",
            "probe_source = \"198.51.100.1\"\n[gateway.states]\nnat_addr = [\"198.51.100.1\"]",
        );
        assert_eq!(
            found(&with_source, TargetOs::Linux),
            ["note health_source = \"icmp\" (datagram ICMP sockets) @ gateway WAN1"]
        );
        assert_eq!(
            found(&with_source, TargetOs::FreeBsd),
            ["note health_source = \"icmp\" (raw ICMP sockets) @ gateway WAN1"]
        );
        let no_source = policy("", "signal", "[gateway.states]\nnat_addr = [\"198.51.100.1\"]");
        assert_eq!(
            found(&no_source, TargetOs::FreeBsd),
            [
                "warning ICMP probes without probe_source @ gateway WAN1",
                "note health_source = \"icmp\" (raw ICMP sockets) @ gateway WAN1",
            ]
        );
        assert_eq!(found(&no_source, TargetOs::Linux).len(), 1);
    }

    #[test]
    fn fib_is_ignored_on_linux() {
        let p = policy(
            "",
            "signal",
            "probe_source = \"198.51.100.1\"\nfib = 2\n[gateway.states]\nnat_addr = [\"198.51.100.1\"]",
        );
        assert_eq!(p.gateways[0].fib, Some(2));
        assert!(found(&p, TargetOs::Linux).contains(&"warning fib @ gateway WAN1".to_owned()));
        assert!(!found(&p, TargetOs::FreeBsd).iter().any(|f| f.contains("fib")));
    }

    #[test]
    fn fib_is_checked_at_load() {
        let parse = |gw1: &str| {
            let text = format!(
                "[[gateway]]\nname = \"WAN1\"\ninterface = \"igb0\"\naddress = \"198.51.100.254\"\n{gw1}\n[gateway.states]\nnat_addr = [\"198.51.100.1\"]\n"
            );
            crate::load::parse(&text, "t.toml").map(|p| p.gateways[0].fib)
        };
        assert_eq!(parse("fib = 0").unwrap(), Some(0));
        assert_eq!(parse("fib = 65535").unwrap(), Some(65535));
        assert_eq!(parse("").unwrap(), None);
        for (bad, says) in [
            ("fib = 65536", "out of range"),
            ("fib = -1", "out of range"),
            ("fib = \"1\"", "without quotes"),
            ("health_source = \"external\"\nfib = 1", "applies only to health_source = \"icmp\""),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("gateway[1].fib") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn readable_paths_are_ignored_under_capsicum() {
        let p = policy("readable_paths = [\"/etc/hosts\"]", "signal", EXTERNAL_NAT);
        assert!(check(&p, TargetOs::Linux).is_empty());
        assert_eq!(
            found(&p, TargetOs::FreeBsd),
            ["warning [engine] readable_paths @ [engine] readable_paths"]
        );
    }

    #[test]
    fn every_row_is_reviewed_text_and_excludes_some_system() {
        for r in RULES {
            assert!(!r.works_on.is_empty() && r.works_on.len() < TargetOs::ALL.len(), "{r:?}");
            assert!(r.reason.ends_with('.') && r.reason.len() > 40, "{r:?}");
        }
        assert_eq!("freebsd".parse(), Ok(TargetOs::FreeBsd));
        assert!("openbsd".parse::<TargetOs>().unwrap_err().contains("\"linux\" or \"freebsd\""));
    }

    /// The shipped examples: the pfSense one is clean on FreeBSD but for notes.
    #[test]
    fn the_pfsense_example_is_clean_on_freebsd() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pfsense-two-wan.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let p = crate::load::parse(&text, path).unwrap();
        let f = check(&p, TargetOs::FreeBsd);
        assert!(f.iter().all(|f| f.level == Level::Note), "{f:#?}");
    }
}
