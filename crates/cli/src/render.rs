//! Human and JSON renderings of what the broker answers.

use serde_json::{Value, json};
use statecull_proto::{
    AddressFamily, Capabilities, HelloReply, KillReport, L4, StateDetail, StateKey, StateRecord,
    ipproto,
};

/// Names of the conntrack `IPS_*` status bits that are set.
pub fn ct_status_names(status: u32) -> Vec<&'static str> {
    const NAMES: [&str; 16] = [
        "EXPECTED",
        "SEEN_REPLY",
        "ASSURED",
        "CONFIRMED",
        "SRC_NAT",
        "DST_NAT",
        "SEQ_ADJUST",
        "SRC_NAT_DONE",
        "DST_NAT_DONE",
        "DYING",
        "FIXED_TIMEOUT",
        "TEMPLATE",
        "NAT_CLASH",
        "HELPER",
        "OFFLOAD",
        "HW_OFFLOAD",
    ];
    NAMES.iter().enumerate().filter(|(bit, _)| status & (1 << bit) != 0).map(|(_, n)| *n).collect()
}

/// conntrack TCP state names (`TCP_CONNTRACK_*`).
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "?",
    }
}

fn key_json(k: &StateKey) -> Value {
    let mut v = json!({
        "proto": ipproto::name(k.proto),
        "src": k.src.to_string(),
        "dst": k.dst.to_string(),
    });
    match k.l4 {
        L4::Ports { src, dst } => {
            v["sport"] = json!(src);
            v["dport"] = json!(dst);
        }
        L4::Icmp { id, kind, code } => {
            v["icmp_id"] = json!(id);
            v["icmp_type"] = json!(kind);
            v["icmp_code"] = json!(code);
        }
        L4::None => {}
    }
    v
}

/// One record as a flat JSON object.
pub fn record_json(r: &StateRecord) -> Value {
    let mut v = key_json(&r.key);
    v["family"] = json!(r.key.family().to_string());
    match &r.detail {
        StateDetail::Conntrack { reply, mark, zone, status, tcp_state } => {
            v["reply"] = key_json(reply);
            v["mark"] = json!(mark);
            v["zone"] = json!(zone);
            v["status"] = json!(ct_status_names(*status));
            if let Some(s) = tcp_state {
                v["tcp_state"] = json!(tcp_state_name(*s));
            }
        }
        StateDetail::Pf { direction, interface, orig_interface, wire, stack, gateway, rule } => {
            v["direction"] = json!(direction);
            v["interface"] = json!(interface);
            v["orig_interface"] = json!(orig_interface);
            v["wire"] = key_json(wire);
            v["stack"] = key_json(stack);
            v["gateway"] = json!(gateway.map(|g| g.to_string()));
            v["rule"] = json!(rule);
        }
    }
    match r.handle {
        statecull_proto::StateHandle::Conntrack { id, .. } => v["id"] = json!(id),
        statecull_proto::StateHandle::Pf { id, creator_id } => {
            // pfctl prints ids in hexadecimal; the raw value is what a kill needs.
            v["id"] = json!(format!("{id:016x}"));
            v["creator_id"] = json!(format!("{creator_id:08x}"));
        }
    }
    if let Some(t) = r.expires_in_secs {
        v["expires_in"] = json!(t);
    }
    if let Some(c) = r.counters {
        v["counters"] = json!({
            "orig_packets": c.orig_packets, "orig_bytes": c.orig_bytes,
            "reply_packets": c.reply_packets, "reply_bytes": c.reply_bytes,
        });
    }
    v
}

/// One record as one line, in the spirit of `conntrack -L`.
pub fn record_line(r: &StateRecord) -> String {
    let mut line = r.key.to_string();
    match &r.detail {
        StateDetail::Conntrack { reply, mark, zone, tcp_state, .. } => {
            if let Some(s) = tcp_state {
                line.push_str(&format!(" {}", tcp_state_name(*s)));
            }
            line.push_str(&format!(
                "  reply {} -> {}",
                endpoint(&reply.src, reply.src_port()),
                endpoint(&reply.dst, reply.dst_port())
            ));
            if r.is_nat() {
                line.push_str(" [NAT]");
            }
            line.push_str(&format!("  mark {mark:#x}"));
            if *zone != 0 {
                line.push_str(&format!(" zone {zone}"));
            }
        }
        StateDetail::Pf { direction, interface, orig_interface, wire, gateway, .. } => {
            let dir = match direction {
                statecull_proto::PfDirection::In => "in",
                statecull_proto::PfDirection::Out => "out",
            };
            line.push_str(&format!("  {dir} on {interface}"));
            if interface == "all" {
                line.push_str(&format!(" (created on {orig_interface})"));
            }
            if r.is_nat() {
                line.push_str(&format!(
                    "  wire {} -> {} [NAT]",
                    endpoint(&wire.src, wire.src_port()),
                    endpoint(&wire.dst, wire.dst_port())
                ));
            }
            if let Some(g) = gateway {
                line.push_str(&format!("  gateway {g}"));
            }
        }
    }
    if let Some(t) = r.expires_in_secs {
        line.push_str(&format!("  expires {t}s"));
    }
    line
}

fn endpoint(addr: &std::net::IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

pub fn kill_json(k: &KillReport, elapsed_ms: f64) -> Value {
    json!({
        "killed": k.killed,
        "requested": k.requested,
        "not_found": k.not_found,
        "spared": k.spared,
        "failed": k.failed,
        "first_error": k.first_error,
        "exact": k.exact,
        "path": k.path.name(),
        "table_passes": k.table_passes,
        "broker_elapsed_ms": k.elapsed_us as f64 / 1000.0,
        "elapsed_ms": elapsed_ms,
        "note": k.note,
    })
}

/// Human summary of a kill, one fact per line.
pub fn kill_text(k: &KillReport, elapsed_ms: f64) -> String {
    let mut out = format!(
        "killed {} state(s) in {:.1} ms (broker {:.1} ms) via {}, {} table pass(es)\n",
        k.killed,
        elapsed_ms,
        k.elapsed_us as f64 / 1000.0,
        k.path,
        k.table_passes
    );
    if !k.exact {
        out.push_str(
            "  count from the table size before and after: exact unless other connections \
             came or went meanwhile\n",
        );
    }
    if k.requested > 0 {
        out.push_str(&format!("  requested {}\n", k.requested));
    }
    if k.not_found > 0 {
        out.push_str(&format!("  {} already gone\n", k.not_found));
    }
    if k.spared > 0 {
        out.push_str(&format!("  spared {} state(s) touching protected prefixes\n", k.spared));
    }
    if k.failed > 0 {
        out.push_str(&format!(
            "  FAILED to kill {}: {}\n",
            k.failed,
            k.first_error.as_deref().unwrap_or("unknown error")
        ));
    } else if let Some(e) = &k.first_error {
        if k.exact {
            out.push_str(&format!("  warning: {e}\n"));
        } else {
            // The broker's way of saying the kill stopped part way or lost error answers.
            out.push_str(&format!("  INCOMPLETE: {e}\n"));
        }
    }
    if let Some(note) = &k.note {
        out.push_str(&format!("  note: {note}\n"));
    }
    out
}

/// How tuple kills (NAT address, hosts, protocol) run for `family`, as the broker found out.
pub fn tuple_filter_status(c: &Capabilities, family: AddressFamily) -> &'static str {
    if c.kernel_tuple_broken.contains(&family) {
        "tested and found wrong on this kernel: dump and delete"
    } else if c.kernel_tuple_flush.contains(&family) {
        "in the kernel"
    } else {
        "not verified yet (no entries to test on): dump and delete"
    }
}

pub fn hello_text(h: &HelloReply) -> String {
    let c = &h.backend.capabilities;
    let mut out = format!(
        "broker {} (protocol {}), backend {} on kernel {}\n",
        h.broker_version, h.protocol_version, h.backend.kind, h.backend.kernel
    );
    out.push_str(&format!(
        "  selectors: {}\n",
        c.selector_fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
    ));
    if c.selector_fields.contains(&statecull_proto::SelectorField::Mark) {
        out.push_str(&format!("  in-kernel kills by mark: {}\n", yes(c.kernel_mark_flush)));
    }
    if c.match_opposite {
        out.push_str("  --opposite: kills each victim's twin state in the other direction\n");
    }
    if c.ruleset_ticket {
        out.push_str(
            "  ruleset ticket: readable (confirm = \"pf-ruleset\"; statecull broker ruleset-ticket)\n",
        );
    }
    if c.listing_only.is_empty() {
        out.push_str("  kills by NAT address/tuple:\n");
    } else {
        // pf: the kernel's kill filter cannot say these; they are never sent to it.
        out.push_str(&format!(
            "  kills by {}: always a listing, then kills by id\n",
            c.listing_only.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        ));
        out.push_str("  kills by host, port, protocol, gateway, interface (tuple):\n");
    }
    for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
        let status = tuple_filter_status(c, family);
        if !c.listing_only.is_empty() && c.kernel_tuple_flush.contains(&family) {
            // pf prices each kill: a filtered pass per selector, or one listing.
            out.push_str(&format!(
                "    {family}: {status}, or one listing when that costs less (many selectors) \
                 and always with protected prefixes\n"
            ));
        } else {
            out.push_str(&format!("    {family}: {status}\n"));
        }
    }
    out.push_str(&format!(
        "  limits: {} selectors, {} handles per request, {} records per batch, frames of {} bytes\n",
        h.limits.max_selectors, h.limits.max_handles, h.limits.max_snapshot_batch, h.limits.max_frame_len
    ));
    if h.protected.is_empty() {
        out.push_str("  protected prefixes: none\n");
    } else {
        out.push_str(&format!(
            "  protected prefixes (never killed): {}\n",
            h.protected.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no (dump and delete)" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statecull_proto::{BackendInfo, BackendKind, KillPath, Limits};

    fn hello(flush: Vec<AddressFamily>, broken: Vec<AddressFamily>) -> HelloReply {
        HelloReply {
            protocol_version: statecull_proto::PROTOCOL_VERSION,
            broker_version: "0.0.0".into(),
            backend: BackendInfo {
                kind: BackendKind::Conntrack,
                kernel: "6.1.0".into(),
                capabilities: Capabilities {
                    selector_fields: vec![],
                    kernel_mark_flush: true,
                    kernel_tuple_flush: flush,
                    kernel_tuple_broken: broken,
                    listing_only: vec![],
                    match_opposite: false,
                    flush_by_interface: false,
                    ruleset_ticket: false,
                },
            },
            limits: Limits::default(),
            protected: vec![],
        }
    }

    #[test]
    fn hello_says_which_fields_never_run_in_the_kernel() {
        let mut h = hello(vec![AddressFamily::Ipv4, AddressFamily::Ipv6], vec![]);
        h.backend.capabilities.listing_only = vec![statecull_proto::SelectorField::NatAddr];
        let text = hello_text(&h);
        assert!(text.contains("kills by nat-addr: always a listing, then kills by id"), "{text}");
        assert!(text.contains("(tuple):\n    ipv4: in the kernel, or one listing when"), "{text}");
        assert!(!text.contains("kills by NAT address/tuple"), "{text}");
    }

    #[test]
    fn hello_shows_the_tuple_filter_status_per_family() {
        let text = hello_text(&hello(vec![AddressFamily::Ipv4], vec![AddressFamily::Ipv6]));
        assert!(text.contains("ipv4: in the kernel\n"), "{text}");
        assert!(
            text.contains("ipv6: tested and found wrong on this kernel: dump and delete\n"),
            "{text}"
        );
        let text = hello_text(&hello(vec![], vec![]));
        for f in ["ipv4", "ipv6"] {
            assert!(
                text.contains(&format!(
                    "{f}: not verified yet (no entries to test on): dump and delete\n"
                )),
                "{text}"
            );
        }
    }

    fn kill(note: Option<&str>, exact: bool, first_error: Option<&str>) -> KillReport {
        KillReport {
            requested: 0,
            killed: 5,
            not_found: 0,
            spared: 0,
            failed: 0,
            first_error: first_error.map(str::to_owned),
            exact,
            path: KillPath::KernelFilteredFlush,
            table_passes: 1,
            elapsed_us: 1500,
            note: note.map(str::to_owned),
            per_selector: vec![5],
        }
    }

    #[test]
    fn kill_reports_show_the_note() {
        let k = kill(Some("waited for an event listener"), true, None);
        assert!(kill_text(&k, 2.0).contains("  note: waited for an event listener\n"));
        assert_eq!(kill_json(&k, 2.0)["note"], "waited for an event listener");
        let k = kill(None, true, None);
        assert!(!kill_text(&k, 2.0).contains("note"));
        assert!(kill_json(&k, 2.0)["note"].is_null());
    }

    #[test]
    fn an_inexact_kill_with_an_error_is_incomplete_not_a_warning() {
        let text = kill_text(&kill(None, false, Some("stopped")), 1.0);
        assert!(text.contains("INCOMPLETE: stopped"), "{text}");
        let text = kill_text(&kill(None, true, Some("odd")), 1.0);
        assert!(text.contains("warning: odd"), "{text}");
    }
}
