//! A policy in plain words, for `statecull check-policy FILE` and `statecull-engine
//! --check`: each gateway (interface, next hop, how its health is judged, how its states
//! are recognised), each group (members by tier, what happens on down and on recovery),
//! protected flows, routing confirmation, engine settings, and then [`warnings`]: things a
//! valid policy says that are probably not what the operator meant.
//!
//! It describes the loaded [`Policy`], defaults included, so it shows the values the engine
//! will use; it never restates a default itself (those live in [`crate::model`]). Values are
//! spelt as the file spells them (`crate::load::words`). The text is wrapped at 100 columns.
//! Explaining is linear in the size of the policy: group memberships are gathered in one
//! pass, and [`explain_counted`] counts the steps so a test can prove it.

use std::cell::Cell;
use std::fmt::Write as _;

use statecull_proto::ipproto;

use crate::load::words::{family_word, fmt_duration, fmt_num, fmt_pct};
use crate::model::{
    Gateway, Group, HealthSource, OnDown, OnRecovery, Policy, ProtectedFlow, RoutingConfirm,
    StatesRefresh, Trigger,
};

/// A human explanation of a policy, several lines long, for `statecull check-policy FILE`:
/// each gateway (interface, next hop, how its health is judged, how its states are
/// recognised), each group (members by tier, what happens on down and on recovery),
/// protected flows, routing confirmation, and the [`warnings`] at the end.
pub fn explain(policy: &Policy) -> String {
    explain_counted(policy).0
}

/// [`explain`], also returning the steps its lookups took (see [`crate::load::parse_counted`]).
#[doc(hidden)]
pub fn explain_counted(policy: &Policy) -> (String, u64) {
    let steps = Cell::new(0);
    let mut out = String::new();
    // Writing to a String cannot fail; the result is ignored on purpose.
    let _ = explain_into(policy, &mut out, &steps);
    (wrap(&out, WRAP_WIDTH), steps.get())
}

fn step(steps: &Cell<u64>, n: usize) {
    steps.set(steps.get().saturating_add(n as u64));
}

/// For each gateway, the groups it is a member of (in file order) with its tier there: one
/// pass over all members, so explaining a policy does not rescan every group per gateway.
fn memberships<'p>(p: &'p Policy, steps: &Cell<u64>) -> Vec<Vec<(&'p Group, u8)>> {
    let mut of = vec![Vec::new(); p.gateways.len()];
    for grp in &p.groups {
        for m in &grp.members {
            step(steps, 1);
            if let Some(list) = of.get_mut(m.gateway) {
                // A gateway counts once per group, with its first tier there.
                let listed = list.last().is_some_and(|(g, _): &(&Group, u8)| std::ptr::eq(*g, grp));
                if !listed {
                    list.push((grp, m.tier));
                }
            }
        }
    }
    of
}

/// Column at which [`explain`] wraps its lines (a terminal, with room to spare).
const WRAP_WIDTH: usize = 100;

/// Wrap every line longer than `width` at spaces, continuing with the line's indent plus
/// two (so a wrapped bullet or sentence stays visibly one item).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let pad = " ".repeat(indent + 2);
        let mut current = String::new();
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            if current.is_empty() {
                current.push_str(&" ".repeat(indent));
                current.push_str(word);
            } else if current.len() + 1 + word.len() > width {
                out.push_str(&current);
                out.push('\n');
                current = format!("{pad}{word}");
            } else {
                current.push(' ');
                current.push_str(word);
            }
        }
        out.push_str(&current);
        out.push('\n');
    }
    // Callers print it with println!.
    out.truncate(out.trim_end().len());
    out
}

/// Things in a valid policy that are probably not what the operator wants: a group with
/// one member, a gateway in no group, `on_down = "all"`, and similar. One sentence each.
pub fn warnings(policy: &Policy) -> Vec<String> {
    let steps = Cell::new(0);
    warnings_with(policy, &memberships(policy, &steps))
}

fn warnings_with(policy: &Policy, memberships: &[Vec<(&Group, u8)>]) -> Vec<String> {
    let mut w = Vec::new();
    if policy.gateways.len() >= 2 && policy.groups.is_empty() {
        w.push(format!(
            "{} gateways but no [[group]]: statecull will monitor them but never kill a state; \
             add a group to say which gateway backs up which",
            policy.gateways.len()
        ));
    }
    for (i, g) in policy.gateways.iter().enumerate() {
        if !policy.groups.is_empty() && memberships.get(i).is_none_or(Vec::is_empty) {
            w.push(format!(
                "gateway {} is in no group: it is only monitored (status, metrics, events); its \
                 failure kills nothing",
                g.name
            ));
        }
        if g.source == HealthSource::Icmp && g.monitor.iter().all(|m| *m == g.address) {
            w.push(format!(
                "gateway {} monitors only its next hop {}: a failure beyond it (the provider's \
                 network) goes unnoticed; add a monitor target further out",
                g.name, g.address
            ));
        }
        if g.source == HealthSource::External {
            w.push(format!(
                "gateway {} has health_source = \"external\": it changes state only when \
                 something runs `statecull gateway {} down|up`",
                g.name, g.name
            ));
        }
        if g.states.rt_addr.is_some()
            && g.states.nat_addr.is_empty()
            && !g.states.nat_from_interface
            && g.states.mark.is_none()
        {
            w.push(format!(
                "gateway {} is recognised by rt_addr only: states that left by the default route \
                 (no route-to) carry no rt_addr and will be missed; add nat_addr (and interface)",
                g.name
            ));
        }
        if !g.health.damping.enabled {
            w.push(format!(
                "gateway {}: flap damping is off, so a flapping link kills its states at every \
                 flap",
                g.name
            ));
        }
    }
    for grp in &policy.groups {
        let tiers = distinct_tiers(grp);
        if grp.members.len() == 1 {
            w.push(format!(
                "group {} has a single member: it can never fail over (there is no other gateway \
                 to move connections to)",
                grp.name
            ));
        } else if tiers.len() == 1 && grp.on_recovery != OnRecovery::Keep {
            w.push(format!(
                "group {}: all members share tier {}, so there is no better tier to recover to \
                 and on_recovery = \"{}\" never acts",
                grp.name,
                tiers.first().copied().unwrap_or(1),
                on_recovery_word(grp.on_recovery)
            ));
        }
        match grp.on_down {
            OnDown::All => w.push(format!(
                "group {}: on_down = \"all\" kills the whole state table, including the \
                 connections (calls, VPNs, LAN-to-LAN) on the healthy links; \"gateway\" kills \
                 only the failed gateway's states",
                grp.name
            )),
            OnDown::None => w.push(format!(
                "group {}: on_down = \"none\" kills nothing: connections through a dead gateway \
                 hang until their states time out (phones may not re-register)",
                grp.name
            )),
            OnDown::Gateway => {}
        }
        if grp.trigger != Trigger::Down {
            let never_degraded: Vec<&str> = grp
                .members
                .iter()
                .filter_map(|m| policy.gateways.get(m.gateway))
                .filter(|g| g.source == HealthSource::External)
                .map(|g| g.name.as_str())
                .collect();
            if !never_degraded.is_empty() {
                w.push(format!(
                    "group {}: trigger = \"{}\", but {} {} health only from external verdicts, \
                     which are down or up, never degraded: for {} only down counts",
                    grp.name,
                    grp.trigger.name(),
                    never_degraded.join(", "),
                    if never_degraded.len() == 1 { "takes its" } else { "take their" },
                    if never_degraded.len() == 1 { "it" } else { "them" },
                ));
            }
        }
        if grp.on_recovery == OnRecovery::KillUnprotected && policy.protected.is_empty() {
            w.push(format!(
                "group {}: on_recovery = \"kill-unprotected\" but the policy has no [[protect]] \
                 flows, so it acts like \"kill\"",
                grp.name
            ));
        }
    }
    if !policy.protected.is_empty()
        && !policy.groups.iter().any(|g| g.on_recovery == OnRecovery::KillUnprotected)
    {
        w.push(
            "[[protect]] flows are spared only by on_recovery = \"kill-unprotected\", and no \
             group uses it"
                .to_owned(),
        );
    }
    let pf_only = policy.gateways.iter().any(|g| {
        (g.states.rt_addr.is_some() || g.states.interface.is_some()) && g.states.mark.is_none()
    });
    if policy.routing.confirm == RoutingConfirm::Rtnetlink && pf_only {
        w.push(
            "routing.confirm = \"rtnetlink\" works on Linux only, but some gateways are \
             recognised the pf way (rt_addr or states.interface, no mark); on FreeBSD use \
             \"pf-ruleset\" (pfSense, OPNsense), \"route-socket\", \"signal\" or \"delay\""
                .to_owned(),
        );
    }
    w
}

fn distinct_tiers(g: &Group) -> Vec<u8> {
    let mut tiers: Vec<u8> = g.members.iter().map(|m| m.tier).collect();
    tiers.dedup();
    tiers
}

fn on_recovery_word(r: OnRecovery) -> &'static str {
    match r {
        OnRecovery::Keep => "keep",
        OnRecovery::Kill => "kill",
        OnRecovery::KillUnprotected => "kill-unprotected",
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn explain_into(p: &Policy, out: &mut String, steps: &Cell<u64>) -> std::fmt::Result {
    writeln!(
        out,
        "{}: {}, {}, {}",
        p.source,
        plural(p.gateways.len(), "gateway", "gateways"),
        plural(p.groups.len(), "group", "groups"),
        plural(p.protected.len(), "protected flow", "protected flows"),
    )?;

    writeln!(out, "\nGateways")?;
    let memberships = memberships(p, steps);
    for (g, groups) in p.gateways.iter().zip(&memberships) {
        explain_gateway(g, groups, out)?;
    }

    writeln!(out, "\nGroups")?;
    if p.groups.is_empty() {
        writeln!(out, "  none: gateways are monitored, nothing is ever killed")?;
    }
    // Joined once, not once per group.
    let protected = p.protected.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
    for grp in &p.groups {
        step(steps, grp.members.len());
        let shared =
            grp.members.iter().any(|m| memberships.get(m.gateway).is_some_and(|l| l.len() > 1));
        explain_group(p, grp, shared, &protected, out)?;
    }

    writeln!(out, "\nProtected flows (spared when a group's on_recovery is kill-unprotected)")?;
    if p.protected.is_empty() {
        writeln!(out, "  none")?;
    }
    for f in &p.protected {
        writeln!(out, "  {}: {}", f.name, describe_flow(f))?;
    }

    writeln!(out, "\nRouting")?;
    let wait = fmt_duration(p.routing.settle_timeout);
    match p.routing.confirm {
        RoutingConfirm::Rtnetlink => writeln!(
            out,
            "  before killing, wait until rtnetlink shows that no ip rule or routing table would \
             send the failed gateway's new connections through it (Linux), or a `routed` \
             signal, at most {wait}; past that, kill anyway and report routing as unconfirmed"
        )?,
        RoutingConfirm::Signal => writeln!(
            out,
            "  before killing, wait for the routing manager to signal `statecull gateway NAME \
             down --routed`, at most {wait}; past that, kill anyway and report routing as \
             unconfirmed"
        )?,
        RoutingConfirm::Delay => {
            writeln!(out, "  before killing, wait {wait} for routing to move off the gateway")?;
        }
        RoutingConfirm::RouteSocket => writeln!(
            out,
            "  before killing, wait until the routing socket shows no default route through \
             the failed gateway (FreeBSD), at most {wait}; past that, kill anyway and report \
             routing as unconfirmed"
        )?,
        RoutingConfirm::PfRuleset => writeln!(
            out,
            "  before killing, wait until pf's main filter ruleset is reloaded (its ticket \
             changes: pfSense and OPNsense move route-to rules off a failed gateway that \
             way), at most {wait}; past that, kill anyway and report routing as unconfirmed"
        )?,
    }
    if p.routing.sweep_delay.is_zero() {
        writeln!(out, "  no trailing sweep")?;
    } else {
        writeln!(
            out,
            "  {} after the kill, a second sweep catches states created meanwhile (a non-zero \
             count means routing moved late)",
            fmt_duration(p.routing.sweep_delay)
        )?;
    }

    writeln!(out, "\nStates per gateway (status, metrics)")?;
    explain_states_refresh(p.engine.states_refresh, out)?;

    let e = &p.engine;
    if e.broker_socket.is_some()
        || e.control_socket.is_some()
        || e.metrics_listen.is_some()
        || !e.readable_paths.is_empty()
    {
        writeln!(out, "\nEngine")?;
        if let Some(s) = &e.broker_socket {
            writeln!(out, "  broker socket: {s}")?;
        }
        if let Some(s) = &e.control_socket {
            writeln!(out, "  control socket: {s}")?;
        }
        if let Some(a) = &e.metrics_listen {
            writeln!(out, "  metrics: http://{a}/metrics")?;
        }
        if !e.readable_paths.is_empty() {
            writeln!(out, "  may read: {}", e.readable_paths.join(", "))?;
        }
    }

    let warnings = warnings_with(p, &memberships);
    if warnings.is_empty() {
        writeln!(out, "\nNo warnings.")?;
    } else {
        writeln!(out, "\nWarnings")?;
        for w in warnings {
            writeln!(out, "  - {w}")?;
        }
    }
    Ok(())
}

/// `[engine] states_refresh`: how the figure status and metrics show is kept up to date.
fn explain_states_refresh(r: StatesRefresh, out: &mut String) -> std::fmt::Result {
    let budget = format!(
        "the next count waits at least {} times as long as the last one took, so counting \
         costs the broker at most 1% of one core",
        StatesRefresh::BUDGET_FACTOR
    );
    match r {
        StatesRefresh::Off => writeln!(
            out,
            "  not counted (states_refresh = \"off\"): status and metrics show no state counts; \
             `statecull plan` still counts when asked"
        ),
        StatesRefresh::Auto => writeln!(
            out,
            "  counted in the background, adaptively: {budget}; and no more often than every {} \
             on conntrack, or every {} on pf, where a count exports every state under the \
             broker's device lock; status and metrics show the last figure and its age",
            fmt_duration(StatesRefresh::AUTO_MIN_CONNTRACK),
            fmt_duration(StatesRefresh::AUTO_MIN_PF),
        ),
        StatesRefresh::AtMostEvery(d) => writeln!(
            out,
            "  counted in the background at most every {}, and less often when counts are \
             slow: {budget}; status and metrics show the last figure and its age",
            fmt_duration(d),
        ),
    }
}

fn explain_gateway(g: &Gateway, groups: &[(&Group, u8)], out: &mut String) -> std::fmt::Result {
    let h = &g.health;
    writeln!(
        out,
        "  {} ({}): next hop {} on {}",
        g.name,
        family_word(g.family),
        g.address,
        g.interface
    )?;
    match &g.source {
        HealthSource::Icmp => {
            let targets = g.monitor.iter().map(ToString::to_string).collect::<Vec<_>>();
            let mut from = g
                .probe_source
                .map_or_else(|| "the interface's address".to_owned(), |a| a.to_string());
            if let Some(fib) = g.fib {
                from.push_str(&format!(" in FIB {fib} (FreeBSD)"));
            }
            writeln!(
                out,
                "    health: ICMP echo to {} every {} from {from}; no answer within {} counts \
                 as lost",
                targets.join(", "),
                fmt_duration(g.probe_interval),
                fmt_duration(g.probe_timeout)
            )?;
        }
        HealthSource::Dpinger { socket } => writeln!(
            out,
            "    health: read from dpinger's status socket {socket} every {}",
            fmt_duration(g.probe_interval)
        )?,
        HealthSource::External => writeln!(
            out,
            "    health: external only (`statecull gateway {} down|up`); no probes",
            g.name
        )?,
    }
    writeln!(
        out,
        "    judged over the last {} results (no verdict before {}): down at {} loss or more; \
         degraded at {} loss or {} average latency or more, and up again from degraded at {} \
         loss or less with {} latency or less; a down gateway comes back once its loss has \
         stayed at or below {} for {}",
        h.window,
        h.min_samples,
        fmt_pct(&h.loss_down_pct),
        fmt_pct(&h.loss_degraded_pct),
        fmt_duration(h.latency_degraded),
        fmt_pct(&h.loss_up_pct),
        fmt_duration(h.latency_up),
        fmt_pct(&h.loss_up_pct),
        fmt_duration(h.hold_down),
    )?;
    let d = &h.damping;
    if d.enabled {
        writeln!(
            out,
            "    flap damping: each failure adds {} to a penalty (at most {}) that halves every \
             {}; a failure that takes it above {} holds the gateway down until it falls below {}",
            fmt_num(d.penalty),
            fmt_num(d.max_penalty),
            fmt_duration(d.half_life),
            fmt_num(d.suppress_above),
            fmt_num(d.reuse_below),
        )?;
    } else {
        writeln!(out, "    flap damping: off")?;
    }
    writeln!(
        out,
        "    external verdicts (`statecull gateway {} down|up`): a down acts at once{}; an up is \
         used once it has stood for {} with no down since{}",
        g.name,
        if d.enabled { " and counts as a failure for flap damping" } else { "" },
        fmt_duration(h.hold_down),
        if d.enabled { ", and never while flap damping holds the gateway down" } else { "" },
    )?;
    let s = &g.states;
    let mut ways = Vec::new();
    if let Some(a) = s.rt_addr {
        ways.push(format!("route-to gateway (rt_addr) {a} (pf)"));
    }
    if let Some(m) = s.mark {
        ways.push(format!("connection mark {m} (conntrack)"));
    }
    if s.nat_from_interface {
        ways.push(format!(
            "NAT address: whatever {} has (followed as it changes; one that left stays for {} \
             minutes)",
            g.interface, 5
        ));
    }
    if !s.nat_addr.is_empty() {
        let addrs = s.nat_addr.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match &s.interface {
            Some(i) => ways.push(format!("NAT address {addrs} on interface {i} (pf)")),
            None => ways.push(format!("NAT address {addrs}")),
        }
    }
    writeln!(out, "    its states are those with: {}", ways.join("; or "))?;
    let groups =
        groups.iter().map(|(grp, tier)| format!("{} (tier {tier})", grp.name)).collect::<Vec<_>>();
    if groups.is_empty() {
        writeln!(out, "    in no group: monitored only")?;
    } else {
        writeln!(out, "    member of: {}", groups.join(", "))?;
    }
    Ok(())
}

/// `protected`: the protected flows' names, joined.
/// `shared`: a member is also in another group.
fn explain_group(
    p: &Policy,
    grp: &Group,
    shared: bool,
    protected: &str,
    out: &mut String,
) -> std::fmt::Result {
    writeln!(out, "  {}", grp.name)?;
    for tier in distinct_tiers(grp) {
        let names = grp
            .members
            .iter()
            .filter(|m| m.tier == tier)
            .filter_map(|m| p.gateways.get(m.gateway).map(|g| g.name.as_str()))
            .collect::<Vec<_>>();
        let share = if names.len() > 1 { " (sharing the load)" } else { "" };
        writeln!(out, "    tier {tier}: {}{share}", names.join(", "))?;
    }
    let down = match grp.on_down {
        OnDown::None => {
            "nothing is killed; its connections hang until their states time out".to_owned()
        }
        OnDown::Gateway => "that gateway's states are killed, and no others, so its connections \
                            reconnect through the best member still up; other links' \
                            connections are untouched (nothing is killed while no other member \
                            is up)"
            .to_owned(),
        OnDown::All => {
            "every state of the table is killed, on every link (like pfSense's \"kill all \
             states\")"
                .to_owned()
        }
    };
    let failed = match grp.trigger {
        Trigger::Down => "it is down (not when it is only degraded)",
        Trigger::Loss => {
            "it is down, or degraded by loss (at or above its loss_degraded, until \
                          back at or below loss_up)"
        }
        Trigger::Latency => {
            "it is down, or degraded by latency (average at or above its \
                             latency_degraded, until back at or below latency_up)"
        }
        Trigger::LossOrLatency => {
            "it is down, or degraded by loss or by latency (at or above \
                                   its loss_degraded or latency_degraded)"
        }
    };
    writeln!(
        out,
        "    a member counts as failed (trigger = {}) when {failed}{}",
        grp.trigger.name(),
        if shared {
            "; a member that is also in another group fails only once every one of its groups \
             says so (its states cannot be told apart by group)"
        } else {
            ""
        }
    )?;
    writeln!(out, "    when a member goes down: {down}")?;
    let recovery = match grp.on_recovery {
        OnRecovery::Keep => "connections stay on the lower tier until they end; new ones use \
                             the recovered gateway"
            .to_owned(),
        OnRecovery::Kill => {
            "the lower tiers' states are killed, so connections move back at once".to_owned()
        }
        OnRecovery::KillUnprotected if protected.is_empty() => {
            "the lower tiers' states are killed, so connections move back at once (no flow is \
             protected)"
                .to_owned()
        }
        OnRecovery::KillUnprotected => format!(
            "the lower tiers' states are killed, so connections move back at once, except \
             protected flows ({})",
            protected
        ),
    };
    writeln!(out, "    when a better tier recovers: {recovery}")?;
    Ok(())
}

fn describe_flow(f: &ProtectedFlow) -> String {
    let mut parts = Vec::new();
    if let Some(n) = f.proto {
        parts.push(ipproto::name(n).into_owned());
    }
    if !f.ports.is_empty() {
        let ports = f.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let word = if f.ports.len() == 1 && f.ports.iter().all(|r| r.first == r.last) {
            "port"
        } else {
            "ports"
        };
        parts.push(format!("{word} {ports} at either end"));
    }
    if !f.prefixes.is_empty() {
        let prefixes = f.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        parts.push(format!("either end in {prefixes}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use statecull_proto::{AddressFamily, IfName};

    use super::*;
    use crate::load::parse;
    use crate::model::{
        EngineSettings, FlapDamping, GroupMember, HealthParams, Routing, StateMatch,
    };

    /// Only what has no default: two gateways' names, interfaces, addresses and a
    /// recogniser each, and a group that lists them. Every other setting is left out.
    const MINIMAL: &str = r#"
[[gateway]]
name = "WAN1"
interface = "em0"
address = "198.51.100.254"

[gateway.states]
nat_addr = ["198.51.100.1"]

[[gateway]]
name = "WAN2"
interface = "em1"
address = "203.0.113.254"

[gateway.states]
mark = "0x2/0xff"

[[group]]
name = "failover"
members = [{ gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 }]
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("a test address")
    }

    fn ifname(s: &str) -> IfName {
        s.parse().expect("a test interface name")
    }

    /// A gateway of MINIMAL, with every defaulted field taken from the model's defaults.
    fn default_gateway(name: &str, interface: &str, address: &str, states: StateMatch) -> Gateway {
        Gateway {
            name: name.to_owned(),
            interface: ifname(interface),
            address: ip(address),
            family: AddressFamily::Ipv4,
            monitor: vec![ip(address)],
            probe_source: None,
            fib: None,
            source: HealthSource::default(),
            probe_interval: Gateway::DEFAULT_PROBE_INTERVAL,
            probe_timeout: Gateway::DEFAULT_PROBE_TIMEOUT,
            health: HealthParams::default(),
            states,
        }
    }

    /// `explain` wraps long lines; compare text with whitespace runs collapsed.
    fn flat(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The loader and the explanation cannot disagree about defaults: the explanation of
    /// a policy that leaves every setting out is the explanation of the model's `Default`
    /// values, and it spells out each of them. Fails if the loader fills in any value of
    /// its own, or if the explanation stops showing one.
    #[test]
    fn a_minimal_policy_is_explained_with_exactly_the_default_values() {
        let loaded = parse(MINIMAL, "<minimal>").expect("MINIMAL parses");
        let defaults = Policy {
            source: "<minimal>".to_owned(),
            engine: EngineSettings::default(),
            gateways: vec![
                default_gateway(
                    "WAN1",
                    "em0",
                    "198.51.100.254",
                    StateMatch { nat_addr: vec![ip("198.51.100.1")], ..StateMatch::default() },
                ),
                default_gateway(
                    "WAN2",
                    "em1",
                    "203.0.113.254",
                    StateMatch {
                        mark: Some("0x2/0xff".parse().expect("a test mark")),
                        ..StateMatch::default()
                    },
                ),
            ],
            groups: vec![Group {
                name: "failover".to_owned(),
                members: vec![
                    GroupMember { gateway: 0, tier: 1 },
                    GroupMember { gateway: 1, tier: 2 },
                ],
                on_down: OnDown::default(),
                on_recovery: OnRecovery::default(),
                trigger: Trigger::default(),
            }],
            protected: Vec::new(),
            routing: Routing::default(),
        };
        assert_eq!(loaded, defaults);
        let shown = explain(&loaded);
        assert_eq!(shown, explain(&defaults));

        // Each default, as the explanation spells it (for both gateways).
        let (h, d, r) = (HealthParams::default(), FlapDamping::default(), Routing::default());
        let per_gateway = [
            format!(
                "every {} from the interface's address; no answer within {} counts as lost",
                fmt_duration(Gateway::DEFAULT_PROBE_INTERVAL),
                fmt_duration(Gateway::DEFAULT_PROBE_TIMEOUT),
            ),
            format!(
                "judged over the last {} results (no verdict before {}): down at {} loss or \
                 more; degraded at {} loss or {} average latency or more, and up again from \
                 degraded at {} loss or less with {} latency or less; a down gateway comes back \
                 once its loss has stayed at or below {} for {}",
                h.window,
                h.min_samples,
                fmt_pct(&h.loss_down_pct),
                fmt_pct(&h.loss_degraded_pct),
                fmt_duration(h.latency_degraded),
                fmt_pct(&h.loss_up_pct),
                fmt_duration(h.latency_up),
                fmt_pct(&h.loss_up_pct),
                fmt_duration(h.hold_down),
            ),
            format!(
                "each failure adds {} to a penalty (at most {}) that halves every {}; a failure \
                 that takes it above {} holds the gateway down until it falls below {}",
                fmt_num(d.penalty),
                fmt_num(d.max_penalty),
                fmt_duration(d.half_life),
                fmt_num(d.suppress_above),
                fmt_num(d.reuse_below),
            ),
        ];
        let flat_shown = flat(&shown);
        for sentence in per_gateway {
            assert_eq!(flat_shown.matches(&sentence).count(), 2, "{sentence:?} in:\n{shown}");
        }
        assert!(d.enabled, "the default damping is on, and described as such above");
        let routing = flat(shown.split("\nRouting\n").nth(1).unwrap_or_default());
        let routing = routing.split("Warnings").next().unwrap_or_default();
        let (routing, states) = routing.split_once("States per gateway").unwrap_or_default();
        for value in [r.settle_timeout, r.sweep_delay] {
            let value = fmt_duration(value);
            let said = routing.split(' ').any(|word| word.trim_end_matches([';', ',']) == value);
            assert!(said, "{value} in:\n{routing}");
        }
        // states_refresh = "auto": both backends' minimums and the budget.
        assert_eq!(loaded.engine.states_refresh, StatesRefresh::Auto);
        for value in [StatesRefresh::AUTO_MIN_CONNTRACK, StatesRefresh::AUTO_MIN_PF] {
            let value = fmt_duration(value);
            let said = states.split(' ').any(|word| word.trim_end_matches([';', ',']) == value);
            assert!(said, "{value} in:\n{states}");
        }
        let budget = format!("at least {} times", StatesRefresh::BUDGET_FACTOR);
        assert!(states.contains(&budget), "{budget} in:\n{states}");
        assert!(!shown.lines().any(|l| l == "Engine"), "no [engine] table, no engine section");
    }
}
