//! The policy text: a header saying where it came from and what to check by hand, then the
//! tables in the order `statecull-policy`'s file format documents, each with a comment
//! naming the XML element it came from. Deterministic: the same input gives the same text.

use std::fmt::Write as _;

use crate::translate::{Addr, Health, Out};
use crate::{Severity, System};

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A comment line: no line break can end the comment early.
fn comment(out: &mut String, indent: &str, text: &str) {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let _ = writeln!(out, "{indent}# {flat}");
}

fn addr(a: &Addr) -> String {
    quote(&a.ip.to_string())
}

fn mark(a: &Addr) -> &'static str {
    if a.placeholder { "   # PLACEHOLDER: replace with the current address" } else { "" }
}

pub(crate) fn emit(out: &Out, system: System, source_name: &str) -> String {
    let sys = system.name();
    let mut t = String::new();
    comment(
        &mut t,
        "",
        &format!("statecull policy imported from the {sys} configuration {source_name:?}"),
    );
    comment(
        &mut t,
        "",
        &format!(
            "by `statecull import {}` (statecull {}). Review it before use.",
            system.word(),
            env!("CARGO_PKG_VERSION")
        ),
    );
    t.push_str("#\n");
    let serious: Vec<_> = out.warnings.iter().filter(|w| w.severity == Severity::Warning).collect();
    if serious.is_empty() {
        t.push_str("# Nothing needed attention during the import.\n");
    } else {
        t.push_str("# CHECK BY HAND (each was also printed as a warning):\n");
        for w in serious {
            let where_ = if w.path.is_empty() { String::new() } else { format!(" [{}]", w.path) };
            comment(&mut t, "", &format!("  - {}{where_}", w.message));
        }
    }
    let notes: Vec<_> = out.warnings.iter().filter(|w| w.severity == Severity::Note).collect();
    if !notes.is_empty() {
        t.push_str("#\n# Notes:\n");
        for w in notes {
            comment(&mut t, "", &format!("  - {}", w.message));
        }
    }
    t.push_str("#\n");
    comment(
        &mut t,
        "",
        &format!(
            "Health comes from the dpinger status sockets {sys} runs (health_source = \"dpinger\"),"
        ),
    );
    comment(
        &mut t,
        "",
        &format!(
            "with {sys}'s loss and latency levels. Routing is confirmed by pf's ruleset ticket: {sys}"
        ),
    );
    comment(
        &mut t,
        "",
        "switches by reloading its ruleset when dpinger raises an alarm (confirm = \"pf-ruleset\").",
    );
    if out.gateways.iter().any(|g| g.address.placeholder || g.nat.iter().any(|a| a.placeholder)) {
        comment(
            &mut t,
            "",
            "Addresses marked PLACEHOLDER (240.0.N.x, 100::N:x) stand for a dynamic WAN's current ones.",
        );
    }
    comment(&mut t, "", "Check the result with: statecull check-policy FILE");
    t.push('\n');

    t.push_str("[engine]\n");
    t.push_str("broker_socket = \"/var/run/statecull/broker.sock\"\n");
    t.push_str("control_socket = \"/var/run/statecull/engine.sock\"\n");
    // No readable_paths: the engine reaches dpinger's sockets through its dialer, registered
    // from the gateways' dpinger_socket before it confines itself (Capsicum ignores paths).
    t.push_str("# On pf a count exports every state: \"auto\" counts at most every 10 minutes.\n");
    t.push_str("states_refresh = \"auto\"\n\n");
    t.push_str("[routing]\n");
    let _ = writeln!(
        t,
        "# {sys} moves traffic off a failed gateway by reloading its pf ruleset (route-to rules):"
    );
    t.push_str(
        "# the engine kills once the ruleset's ticket has changed after its decision, or after\n\
         # settle_timeout at the latest (a reload of a big configuration takes seconds).\n",
    );
    t.push_str("confirm = \"pf-ruleset\"\nsettle_timeout = \"30s\"\nsweep_delay = \"2s\"\n");

    for g in &out.gateways {
        t.push_str("\n[[gateway]]\n");
        for c in &g.comments {
            comment(&mut t, "", c);
        }
        let _ = writeln!(t, "name = {}", quote(&g.name));
        let _ = writeln!(t, "interface = {}", quote(&g.interface));
        let _ = writeln!(t, "address = {}{}", addr(&g.address), mark(&g.address));
        let family = if g.address.ip.is_ipv4() { "inet" } else { "inet6" };
        let _ = writeln!(t, "family = \"{family}\"");
        match &g.health {
            Health::Dpinger { socket, placeholder } => {
                let what = if g.monitor.placeholder { " (PLACEHOLDER: the next hop)" } else { "" };
                comment(
                    &mut t,
                    "",
                    &format!("{sys}'s dpinger probes {}{what} for this gateway.", g.monitor.ip),
                );
                t.push_str("health_source = \"dpinger\"\n");
                let m = if *placeholder { "   # PLACEHOLDER: see the header" } else { "" };
                let _ = writeln!(t, "dpinger_socket = {}{m}", quote(socket));
            }
            Health::External { why } => {
                comment(
                    &mut t,
                    "",
                    &format!("{why}: only `statecull gateway {} down|up` decides.", g.name),
                );
                t.push_str("health_source = \"external\"\n");
            }
        }
        let (down, degraded, up) = g.loss;
        let (lat_degraded, lat_up) = g.latency;
        let commented = |t: &mut String, line: String, note: String| {
            let _ = writeln!(t, "{line:<28}# {note}");
        };
        commented(
            &mut t,
            format!("loss_down = \"{down}%\""),
            format!("{sys}: down above losshigh {}%", g.losshigh),
        );
        commented(
            &mut t,
            format!("loss_degraded = \"{degraded}%\""),
            format!("{sys}: warning above losslow {up}%"),
        );
        let _ = writeln!(t, "loss_up = \"{up}%\"");
        commented(
            &mut t,
            format!("latency_degraded = \"{lat_degraded}ms\""),
            format!("{sys}: warning above latencylow {lat_up} ms"),
        );
        let _ = writeln!(t, "latency_up = \"{lat_up}ms\"");
        let _ = writeln!(
            t,
            "# {sys} also calls it down above latencyhigh {} ms; statecull does not (loss only; \
             a group's trigger = \"latency\" fails over on latency_degraded).",
            g.latencyhigh
        );
        t.push_str("\n[gateway.states]\n");
        if let Some(rt) = &g.rt_addr {
            t.push_str("# States of policy-routing rules (route-to) carry the gateway:\n");
            let _ = writeln!(t, "rt_addr = {}{}", addr(rt), mark(rt));
        }
        if !g.nat.is_empty() || g.nat_from_interface {
            t.push_str("# States that left by the default route are found by the WAN's NAT addresses on its device:\n");
            let list: Vec<String> = g.nat.iter().map(addr).collect();
            match (g.nat_from_interface, list.is_empty()) {
                (true, true) => {
                    let _ = writeln!(
                        t,
                        "nat_addr = \"interface\"   # {}'s addresses, followed as they change",
                        g.interface
                    );
                }
                (true, false) => {
                    let _ = writeln!(
                        t,
                        "nat_addr = [\"interface\", {}]   # {}'s addresses, followed as they change, and these",
                        list.join(", "),
                        g.interface
                    );
                }
                (false, _) => {
                    let _ = writeln!(t, "nat_addr = [{}]", list.join(", "));
                }
            }
            let _ = writeln!(t, "interface = {}", quote(&g.interface));
        }
    }
    for gr in &out.groups {
        t.push_str("\n[[group]]\n");
        for c in &gr.comments {
            comment(&mut t, "", c);
        }
        let _ = writeln!(t, "name = {}", quote(&gr.name));
        t.push_str("members = [\n");
        for (name, tier) in &gr.members {
            let _ = writeln!(t, "    {{ gateway = {}, tier = {tier} }},", quote(name));
        }
        t.push_str("]\n");
        let _ = writeln!(t, "on_down = {}", quote(gr.on_down));
        let _ = writeln!(t, "on_recovery = {}", quote(gr.on_recovery));
        if gr.trigger != "down" {
            let _ = writeln!(t, "trigger = {}", quote(gr.trigger));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(quote("x\u{1}"), "\"x\\u0001\"");
    }
}
