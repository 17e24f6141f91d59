//! `statecull broker list --format conntrack|pfctl`: a state as the line `conntrack -L` or
//! `pfctl -ss` prints, for the fields statecull's listing carries, so the greps and scripts
//! written for those tools keep working. Pure: a record in, a line out.
//!
//! Either backend's records print in either layout. A conntrack entry is one connection with
//! its original and reply tuples; a pf state is one direction with a wire key and a stack key
//! (both oriented from the connection's source). They map onto each other: the original tuple
//! is the key as the initiator sent it (pf: the stack key of an outbound state, the wire key
//! of an inbound one), the reply tuple is the other key turned round.
//!
//! What the tools print and statecull does not have is left out, never invented: conntrack's
//! `use=` and, for pf records, the mark and the TCP state; pfctl's state levels
//! (`ESTABLISHED:ESTABLISHED`, `MULTIPLE:SINGLE`) after the addresses.

use std::net::IpAddr;

use statecull_proto::model::ct_status;
use statecull_proto::{L4, PfDirection, StateDetail, StateKey, StateRecord, ipproto};

use crate::render::tcp_state_name;

/// The layouts `list --format` offers besides statecull's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// statecull's line: key, state, reply or interface, mark, expiry
    Text,
    /// One JSON object (the same as --json)
    Json,
    /// The line of `conntrack -L` (conntrack-tools)
    Conntrack,
    /// The line of `pfctl -ss` (FreeBSD)
    Pfctl,
}

/// The key turned round: what the other end sends.
fn reversed(k: &StateKey) -> StateKey {
    let l4 = match k.l4 {
        L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
        other => other,
    };
    StateKey { proto: k.proto, src: k.dst, dst: k.src, l4 }
}

/// The connection's original and reply tuples, as conntrack keeps them.
fn tuples(r: &StateRecord) -> (StateKey, StateKey) {
    match &r.detail {
        StateDetail::Conntrack { reply, .. } => (r.key, *reply),
        StateDetail::Pf { direction: PfDirection::Out, wire, stack, .. } => {
            (*stack, reversed(wire))
        }
        StateDetail::Pf { direction: PfDirection::In, wire, stack, .. } => (*wire, reversed(stack)),
    }
}

/// libnetfilter_conntrack's protocol names (`unknown` for the rest).
fn conntrack_proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "tcp",
        ipproto::UDP => "udp",
        ipproto::UDPLITE => "udplite",
        ipproto::ICMP => "icmp",
        ipproto::ICMPV6 => "icmpv6",
        ipproto::SCTP => "sctp",
        ipproto::GRE => "gre",
        ipproto::DCCP => "dccp",
        _ => "unknown",
    }
}

/// `src=A dst=B sport=P dport=Q ` (or ICMP's `type= code= id=`, GRE's keys).
fn conntrack_tuple(k: &StateKey) -> String {
    let mut s = format!("src={} dst={} ", k.src, k.dst);
    match k.l4 {
        L4::Ports { src, dst } if k.proto == ipproto::GRE => {
            s.push_str(&format!("srckey={src:#x} dstkey={dst:#x} "));
        }
        L4::Ports { src, dst } => s.push_str(&format!("sport={src} dport={dst} ")),
        L4::Icmp { id, kind, code } => s.push_str(&format!("type={kind} code={code} id={id} ")),
        L4::None => {}
    }
    s
}

/// One record as `conntrack -L` prints it: `tcp      6 431999 ESTABLISHED src=... dst=...
/// sport=... dport=... src=... [ASSURED] mark=1`. Counters (`packets= bytes=`) appear after
/// each tuple when the listing has them, `[UNREPLIED]` and `[ASSURED]` where conntrack puts
/// them, `zone=` when not zero; no `use=`. pf records have no mark, TCP state or flags.
pub fn conntrack_line(r: &StateRecord) -> String {
    let (orig, reply) = tuples(r);
    let mut s = format!("{:<8} {} ", conntrack_proto_name(orig.proto), orig.proto);
    if let Some(t) = r.expires_in_secs {
        s.push_str(&format!("{t} "));
    }
    let ct = match &r.detail {
        StateDetail::Conntrack { mark, zone, status, tcp_state, .. } => {
            Some((*mark, *zone, *status, *tcp_state))
        }
        StateDetail::Pf { .. } => None,
    };
    if let Some((_, _, _, Some(state))) = ct {
        s.push_str(tcp_state_name(state));
        s.push(' ');
    }
    s.push_str(&conntrack_tuple(&orig));
    if let Some(c) = r.counters {
        s.push_str(&format!("packets={} bytes={} ", c.orig_packets, c.orig_bytes));
    }
    if let Some((_, _, status, _)) = ct
        && status & ct_status::SEEN_REPLY == 0
    {
        s.push_str("[UNREPLIED] ");
    }
    s.push_str(&conntrack_tuple(&reply));
    if let Some(c) = r.counters {
        s.push_str(&format!("packets={} bytes={} ", c.reply_packets, c.reply_bytes));
    }
    if let Some((mark, zone, status, _)) = ct {
        if status & ct_status::ASSURED != 0 {
            s.push_str("[ASSURED] ");
        }
        s.push_str(&format!("mark={mark} "));
        if zone != 0 {
            s.push_str(&format!("zone={zone} "));
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// pfctl's protocol names (FreeBSD's /etc/protocols), the number for the rest.
fn pfctl_proto_name(p: u8) -> std::borrow::Cow<'static, str> {
    match p {
        ipproto::ICMPV6 => "ipv6-icmp".into(),
        ipproto::UDPLITE => "udplite".into(),
        other => ipproto::name(other),
    }
}

/// A host as pfctl prints it: `192.0.2.1:80`, `2001:db8::1[80]`, no port when it is 0.
fn pfctl_host(addr: &IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (_, None | Some(0)) => addr.to_string(),
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(a), Some(p)) => format!("{a}[{p}]"),
    }
}

/// The port pfctl shows for one side of a key (ICMP: the echo id on both sides).
fn pfctl_port(k: &StateKey, source: bool) -> Option<u16> {
    match k.l4 {
        L4::Ports { src, dst } => Some(if source { src } else { dst }),
        L4::Icmp { id, .. } => Some(id),
        L4::None => None,
    }
}

/// `HOST` or, when the key other than the one shown first differs there, `HOST (HOST)`.
fn pfctl_side(shown: &StateKey, other: &StateKey, source: bool) -> String {
    let (a, b) = if source { (shown.src, other.src) } else { (shown.dst, other.dst) };
    let (pa, pb) = (pfctl_port(shown, source), pfctl_port(other, source));
    let mut s = pfctl_host(&a, pa);
    if a != b || pa != pb {
        s.push_str(&format!(" ({})", pfctl_host(&b, pb)));
    }
    s
}

/// One record as `pfctl -ss` prints it: `em0 tcp 198.51.100.1:61000 (192.0.2.10:5000) ->
/// 203.0.113.5:443`, an outbound state from its source with `->`, an inbound one from its
/// destination with `<-`, the key before translation in parentheses where NAT changed it.
/// The state levels pfctl prints after the addresses are not in statecull's listing and
/// left out. A conntrack entry prints as pf would keep the connection's state on the way
/// out, on `all`: the reply tuple turned round is the wire key, the original the stack key.
pub fn pfctl_line(r: &StateRecord) -> String {
    let (interface, out, wire, stack) = match &r.detail {
        StateDetail::Pf { direction, interface, wire, stack, .. } => {
            (interface.as_str(), *direction == PfDirection::Out, *wire, *stack)
        }
        StateDetail::Conntrack { reply, .. } => ("all", true, reversed(reply), r.key),
    };
    let proto = pfctl_proto_name(wire.proto);
    if out {
        // pfctl: nk = wire, sk = stack; source -> destination.
        format!(
            "{interface} {proto} {} -> {}",
            pfctl_side(&wire, &stack, true),
            pfctl_side(&wire, &stack, false)
        )
    } else {
        // pfctl: nk = stack, sk = wire; destination <- source.
        format!(
            "{interface} {proto} {} <- {}",
            pfctl_side(&stack, &wire, false),
            pfctl_side(&stack, &wire, true)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statecull_proto::{Counters, StateHandle};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(proto: u8, src: &str, dst: &str, l4: L4) -> StateKey {
        StateKey { proto, src: ip(src), dst: ip(dst), l4 }
    }

    fn ct(key: StateKey, reply: StateKey, status: u32, tcp_state: Option<u8>) -> StateRecord {
        StateRecord {
            handle: StateHandle::Conntrack { id: 7, orig: key, zone: 0 },
            key,
            detail: StateDetail::Conntrack { reply, mark: 1, zone: 0, status, tcp_state },
            expires_in_secs: Some(431_999),
            counters: None,
        }
    }

    fn pf(direction: PfDirection, wire: StateKey, stack: StateKey) -> StateRecord {
        StateRecord {
            handle: StateHandle::Pf { id: 1, creator_id: 2 },
            key: stack,
            detail: StateDetail::Pf {
                direction,
                interface: "igb0".into(),
                orig_interface: "igb0".into(),
                wire,
                stack,
                gateway: None,
                rule: Some(3),
            },
            expires_in_secs: Some(86_390),
            counters: None,
        }
    }

    fn snat_tcp() -> StateRecord {
        ct(
            key(6, "192.0.2.10", "203.0.113.5", L4::Ports { src: 51234, dst: 443 }),
            key(6, "203.0.113.5", "198.51.100.1", L4::Ports { src: 443, dst: 61000 }),
            ct_status::SEEN_REPLY | ct_status::ASSURED | ct_status::SRC_NAT,
            Some(3),
        )
    }

    #[test]
    fn conntrack_lines_have_conntracks_layout() {
        assert_eq!(
            conntrack_line(&snat_tcp()),
            "tcp      6 431999 ESTABLISHED src=192.0.2.10 dst=203.0.113.5 sport=51234 \
             dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] mark=1"
        );
        let mut udp = ct(
            key(17, "192.0.2.11", "203.0.113.6", L4::Ports { src: 5060, dst: 5060 }),
            key(17, "203.0.113.6", "192.0.2.11", L4::Ports { src: 5060, dst: 5060 }),
            0,
            None,
        );
        udp.expires_in_secs = Some(29);
        udp.counters =
            Some(Counters { orig_packets: 3, orig_bytes: 300, reply_packets: 0, reply_bytes: 0 });
        if let StateDetail::Conntrack { zone, .. } = &mut udp.detail {
            *zone = 4;
        }
        assert_eq!(
            conntrack_line(&udp),
            "udp      17 29 src=192.0.2.11 dst=203.0.113.6 sport=5060 dport=5060 packets=3 \
             bytes=300 [UNREPLIED] src=203.0.113.6 dst=192.0.2.11 sport=5060 dport=5060 \
             packets=0 bytes=0 mark=1 zone=4"
        );
        let icmp6 = ct(
            key(58, "2001:db8::10", "2001:db8:1::1", L4::Icmp { id: 9, kind: 128, code: 0 }),
            key(58, "2001:db8:1::1", "2001:db8::10", L4::Icmp { id: 9, kind: 129, code: 0 }),
            ct_status::SEEN_REPLY,
            None,
        );
        assert_eq!(
            conntrack_line(&icmp6),
            "icmpv6   58 431999 src=2001:db8::10 dst=2001:db8:1::1 type=128 code=0 id=9 \
             src=2001:db8:1::1 dst=2001:db8::10 type=129 code=0 id=9 mark=1"
        );
    }

    #[test]
    fn pfctl_lines_have_pfctls_layout() {
        // Outbound NAT on the WAN: wire first, the LAN side in parentheses.
        let out = pf(
            PfDirection::Out,
            key(6, "198.51.100.1", "203.0.113.5", L4::Ports { src: 61000, dst: 443 }),
            key(6, "192.0.2.10", "203.0.113.5", L4::Ports { src: 51234, dst: 443 }),
        );
        assert_eq!(
            pfctl_line(&out),
            "igb0 tcp 198.51.100.1:61000 (192.0.2.10:51234) -> 203.0.113.5:443"
        );
        // Inbound redirect: destination first, the address on the wire in parentheses.
        let rdr = pf(
            PfDirection::In,
            key(6, "203.0.113.9", "198.51.100.1", L4::Ports { src: 5555, dst: 80 }),
            key(6, "203.0.113.9", "192.0.2.80", L4::Ports { src: 5555, dst: 80 }),
        );
        assert_eq!(
            pfctl_line(&rdr),
            "igb0 tcp 192.0.2.80:80 (198.51.100.1:80) <- 203.0.113.9:5555"
        );
        // IPv6 ports in brackets; ICMPv6 is ipv6-icmp with its id as the port.
        let v6 = pf(
            PfDirection::In,
            key(58, "2001:db8::10", "2001:db8:1::1", L4::Icmp { id: 9, kind: 128, code: 0 }),
            key(58, "2001:db8::10", "2001:db8:1::1", L4::Icmp { id: 9, kind: 128, code: 0 }),
        );
        assert_eq!(pfctl_line(&v6), "igb0 ipv6-icmp 2001:db8:1::1[9] <- 2001:db8::10[9]");
    }

    #[test]
    fn each_backend_prints_in_the_others_layout() {
        // A conntrack SNAT entry as pf would keep it going out.
        assert_eq!(
            pfctl_line(&snat_tcp()),
            "all tcp 198.51.100.1:61000 (192.0.2.10:51234) -> 203.0.113.5:443"
        );
        // A pf outbound NAT state as conntrack's tuples: the LAN side is the original.
        let out = pf(
            PfDirection::Out,
            key(17, "198.51.100.1", "203.0.113.5", L4::Ports { src: 61000, dst: 53 }),
            key(17, "192.0.2.10", "203.0.113.5", L4::Ports { src: 5353, dst: 53 }),
        );
        assert_eq!(
            conntrack_line(&out),
            "udp      17 86390 src=192.0.2.10 dst=203.0.113.5 sport=5353 dport=53 \
             src=203.0.113.5 dst=198.51.100.1 sport=53 dport=61000"
        );
    }
}
