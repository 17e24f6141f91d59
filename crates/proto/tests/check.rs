//! What `check` accepts and refuses, and what operator text parses to. Every refusal is
//! matched on its error variant, its wire code and a distinctive part of its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use statecull_proto::{
    AddressFamily, Capabilities, ErrorCode, ErrorReply, Hello, IfName, L4, Label, Limits,
    MarkMatch, PortRange, Prefix, ProtoError, Request, Selector, SelectorField, StateHandle,
    StateKey, Unsupported, ipproto,
};

// ---------------------------------------------------------------------------------------------
// Expectations.

#[derive(Debug, Clone, Copy)]
enum Want {
    Ok,
    /// `ProtoError::EmptySelector` whose message contains the text.
    Empty(&'static str),
    /// `ProtoError::Invalid { what, why }` with `why` containing the text.
    Invalid(&'static str, &'static str),
    /// `ProtoError::TooMany { what, count, max }`.
    TooMany(&'static str, usize, usize),
    /// `ProtoError::Parse { what, .. }` with `why` containing the text.
    Parse(&'static str, &'static str),
}

fn expect<T: Debug>(case: &str, got: Result<T, ProtoError>, want: Want) {
    match (want, &got) {
        (Want::Ok, Ok(_)) => {}
        (Want::Empty(text), Err(e @ ProtoError::EmptySelector(msg))) => {
            assert_eq!(e.code(), ErrorCode::EmptySelector, "{case}");
            assert!(msg.contains(text), "{case}: {msg:?} lacks {text:?}");
        }
        (Want::Invalid(what, text), Err(e @ ProtoError::Invalid { what: w, why })) => {
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{case}");
            assert_eq!(*w, what, "{case}: {e}");
            assert!(why.contains(text), "{case}: {why:?} lacks {text:?}");
        }
        (Want::TooMany(what, count, max), Err(e @ ProtoError::TooMany { .. })) => {
            assert_eq!(e.code(), ErrorCode::TooLarge, "{case}");
            assert_eq!(e, &ProtoError::TooMany { what, count, max }, "{case}");
        }
        (Want::Parse(what, text), Err(e @ ProtoError::Parse { what: w, why, .. })) => {
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{case}");
            assert_eq!(*w, what, "{case}: {e}");
            assert!(why.contains(text), "{case}: {why:?} lacks {text:?}");
            assert_eq!(&e.why(), why);
        }
        _ => panic!("{case}: wanted {want:?}, got {got:?}"),
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn pfx(addr: IpAddr, len: u8) -> Prefix {
    Prefix { addr, len }
}

/// `base` with some fields changed.
fn with(base: Selector, f: impl FnOnce(&mut Selector)) -> Selector {
    let mut sel = base;
    f(&mut sel);
    sel
}

fn tcp() -> Selector {
    Selector { proto: Some(ipproto::TCP), ..Selector::default() }
}

// ---------------------------------------------------------------------------------------------
// Selector::check

fn selector_cases() -> Vec<(&'static str, Selector, Want)> {
    let s = Selector::default;
    let fam4 = Some(AddressFamily::Ipv4);
    let fam6 = Some(AddressFamily::Ipv6);
    let net24 = pfx(v4(198, 51, 100, 0), 24);
    let net32 = pfx(v6("2001:db8::"), 32);
    let ports = |first, last| Some(PortRange { first, last });
    let mark = |value, mask| Some(MarkMatch { value, mask });
    let name = |n: &str| Some(IfName(n.into()));
    let label = |l: &str| Some(Label(l.into()));
    vec![
        // Selectors that do not narrow.
        (
            "empty",
            s(),
            Want::Empty("\"(empty)\" would match every state; name at least one of proto, src"),
        ),
        ("family v4 only", with(s(), |x| x.family = fam4), Want::Empty("of family ipv4")),
        ("family v6 only", with(s(), |x| x.family = fam6), Want::Empty("or use flush")),
        (
            "src /0 only",
            with(s(), |x| x.src = Some(pfx(v4(0, 0, 0, 0), 0))),
            Want::Empty("would match every state of family ipv4"),
        ),
        (
            "dst ::/0 only",
            with(s(), |x| x.dst = Some(pfx(v6("::"), 0))),
            Want::Empty("of family ipv6"),
        ),
        (
            "family + both /0",
            with(s(), |x| {
                x.family = fam4;
                x.src = Some(pfx(v4(0, 0, 0, 0), 0));
                x.dst = Some(pfx(v4(0, 0, 0, 0), 0));
            }),
            Want::Empty("would match every state"),
        ),
        // Prefixes.
        (
            "src host bits",
            with(s(), |x| x.src = Some(pfx(v4(198, 51, 100, 7), 24))),
            Want::Invalid(
                "prefix",
                "198.51.100.7/24 has host bits set (did you mean 198.51.100.0/24?)",
            ),
        ),
        (
            "dst v6 host bits",
            with(s(), |x| x.dst = Some(pfx(v6("2001:db8::1"), 32))),
            Want::Invalid("prefix", "did you mean 2001:db8::/32?"),
        ),
        (
            "/0 with host bits",
            with(tcp(), |x| x.src = Some(pfx(v4(10, 0, 0, 0), 0))),
            Want::Invalid("prefix", "did you mean 0.0.0.0/0?"),
        ),
        (
            "v4 len 33",
            with(s(), |x| x.src = Some(pfx(v4(198, 51, 100, 0), 33))),
            Want::Invalid("prefix", "length 33 is longer than 32 bits"),
        ),
        (
            "v4 len 255",
            with(s(), |x| x.dst = Some(pfx(v4(0, 0, 0, 0), 255))),
            Want::Invalid("prefix", "longer than 32 bits"),
        ),
        (
            "v6 len 129",
            with(s(), |x| x.src = Some(pfx(v6("2001:db8::"), 129))),
            Want::Invalid("prefix", "longer than 128 bits"),
        ),
        // Marks.
        (
            "mark mask 0",
            with(s(), |x| x.mark = mark(0, 0)),
            Want::Invalid("mark", "mask 0 matches every state"),
        ),
        (
            "mark value outside mask",
            with(s(), |x| x.mark = mark(0x100, 0xff)),
            Want::Invalid("mark", "0x100/0xff: the value has bits outside the mask"),
        ),
        // Ports.
        (
            "port range reversed",
            with(tcp(), |x| x.dst_port = ports(2000, 1000)),
            Want::Invalid("port range", "2000-1000: the first port is above the last"),
        ),
        (
            "sport without proto",
            with(s(), |x| x.src_port = ports(1, 1)),
            Want::Invalid("selector", "a port needs a protocol with ports"),
        ),
        (
            "dport without proto",
            with(s(), |x| {
                x.dst_port = ports(443, 443);
                x.src = Some(net24);
            }),
            Want::Invalid("selector", "a port needs a protocol"),
        ),
        (
            "ports with icmp",
            with(s(), |x| {
                x.proto = Some(ipproto::ICMP);
                x.dst_port = ports(1, 2);
            }),
            Want::Invalid("selector", "protocol icmp has no ports"),
        ),
        (
            "ports with gre",
            with(s(), |x| {
                x.proto = Some(ipproto::GRE);
                x.src_port = ports(1, 2);
            }),
            Want::Invalid("selector", "protocol gre has no ports"),
        ),
        (
            "ports with proto 99",
            with(s(), |x| {
                x.proto = Some(99);
                x.src_port = ports(1, 2);
            }),
            Want::Invalid("selector", "protocol 99 has no ports"),
        ),
        // Families.
        (
            "src v4 dst v6",
            with(s(), |x| {
                x.src = Some(net24);
                x.dst = Some(net32);
            }),
            Want::Invalid("selector", "src is ipv4 but dst is ipv6"),
        ),
        (
            "family v4 src v6",
            with(s(), |x| {
                x.family = fam4;
                x.src = Some(net32);
            }),
            Want::Invalid("selector", "family is ipv4 but src is ipv6"),
        ),
        (
            "family v6 /0 v4",
            with(s(), |x| {
                x.family = fam6;
                x.src = Some(pfx(v4(0, 0, 0, 0), 0));
            }),
            Want::Invalid("selector", "family is ipv6 but src is ipv4"),
        ),
        (
            "src v4 nat v6",
            with(s(), |x| {
                x.src = Some(net24);
                x.nat_addr = Some(v6("2001:db8::1"));
            }),
            Want::Invalid("selector", "src is ipv4 but nat-addr is ipv6"),
        ),
        (
            "nat v6 gateway v4",
            with(s(), |x| {
                x.nat_addr = Some(v6("2001:db8::1"));
                x.gateway = Some(v4(192, 0, 2, 1));
            }),
            Want::Invalid("selector", "nat-addr is ipv6 but gateway is ipv4"),
        ),
        // Protocol and addresses.
        (
            "proto 0",
            with(s(), |x| x.proto = Some(0)),
            Want::Invalid("protocol", "0 is not a transport protocol"),
        ),
        (
            "nat 0.0.0.0",
            with(s(), |x| x.nat_addr = Some(v4(0, 0, 0, 0))),
            Want::Invalid("selector", "NAT address 0.0.0.0 is not a unicast address"),
        ),
        (
            "nat multicast",
            with(s(), |x| x.nat_addr = Some(v4(224, 0, 0, 1))),
            Want::Invalid("selector", "NAT address 224.0.0.1 is not a unicast"),
        ),
        (
            "nat broadcast",
            with(s(), |x| x.nat_addr = Some(v4(255, 255, 255, 255))),
            Want::Invalid("selector", "255.255.255.255 is not a unicast"),
        ),
        (
            "nat ::",
            with(s(), |x| x.nat_addr = Some(v6("::"))),
            Want::Invalid("selector", "NAT address :: is not"),
        ),
        (
            "nat ff02::1",
            with(s(), |x| x.nat_addr = Some(v6("ff02::1"))),
            Want::Invalid("selector", "ff02::1 is not a unicast"),
        ),
        (
            "gateway 0.0.0.0",
            with(s(), |x| x.gateway = Some(v4(0, 0, 0, 0))),
            Want::Invalid("selector", "gateway 0.0.0.0 is not a unicast address"),
        ),
        (
            "gateway multicast v6",
            with(tcp(), |x| x.gateway = Some(v6("ff05::2"))),
            Want::Invalid("selector", "gateway ff05::2"),
        ),
        // Names.
        (
            "interface 16 bytes",
            with(s(), |x| x.interface = name("abcdefghijklmnop")),
            Want::Invalid("interface name", "longer than 15 bytes"),
        ),
        (
            "interface with /",
            with(s(), |x| x.interface = name("eth/0")),
            Want::Invalid("interface name", "without spaces or '/'"),
        ),
        (
            "interface with space",
            with(s(), |x| x.interface = name("eth 0")),
            Want::Invalid("interface name", "only printable ASCII"),
        ),
        (
            "interface non-ascii",
            with(s(), |x| x.interface = name("ëth0")),
            Want::Invalid("interface name", "only printable ASCII"),
        ),
        (
            "interface empty",
            with(s(), |x| x.interface = name("")),
            Want::Invalid("interface name", "empty name"),
        ),
        (
            "interface ..",
            with(s(), |x| x.interface = name("..")),
            Want::Invalid("interface name", "not an interface name"),
        ),
        (
            "label 64 bytes",
            with(s(), |x| x.label = label(&"l".repeat(64))),
            Want::Invalid("label", "longer than 63 bytes"),
        ),
        ("label empty", with(s(), |x| x.label = label("")), Want::Invalid("label", "empty label")),
        (
            "label NUL",
            with(s(), |x| x.label = label("a\0b")),
            Want::Invalid("label", "contains a NUL byte"),
        ),
        // Valid selectors.
        ("proto only", tcp(), Want::Ok),
        ("src /24", with(s(), |x| x.src = Some(net24)), Want::Ok),
        (
            "dst v6 /32 udp 53",
            with(s(), |x| {
                x.family = fam6;
                x.dst = Some(net32);
                x.proto = Some(ipproto::UDP);
                x.dst_port = ports(53, 53);
            }),
            Want::Ok,
        ),
        ("src /0 with proto", with(tcp(), |x| x.src = Some(pfx(v4(0, 0, 0, 0), 0))), Want::Ok),
        ("host /32", with(s(), |x| x.src = Some(pfx(v4(192, 0, 2, 1), 32))), Want::Ok),
        ("host /128", with(s(), |x| x.dst = Some(pfx(v6("2001:db8::1"), 128))), Want::Ok),
        ("mark 0x1/0xff", with(s(), |x| x.mark = mark(1, 0xff)), Want::Ok),
        ("mark 0/1", with(s(), |x| x.mark = mark(0, 1)), Want::Ok),
        ("nat addr only", with(s(), |x| x.nat_addr = Some(v4(198, 51, 100, 1))), Want::Ok),
        ("gateway v6", with(s(), |x| x.gateway = Some(v6("fe80::1"))), Want::Ok),
        ("interface 15 bytes", with(s(), |x| x.interface = name("abcdefghijklmno")), Want::Ok),
        ("label 63 bytes", with(s(), |x| x.label = label(&"l".repeat(63))), Want::Ok),
        (
            "sctp ports",
            with(s(), |x| {
                x.proto = Some(ipproto::SCTP);
                x.src_port = ports(0, 65535);
            }),
            Want::Ok,
        ),
        (
            "dccp ports",
            with(s(), |x| {
                x.proto = Some(ipproto::DCCP);
                x.dst_port = ports(5, 5);
            }),
            Want::Ok,
        ),
        (
            "udplite ports",
            with(s(), |x| {
                x.proto = Some(ipproto::UDPLITE);
                x.dst_port = ports(5, 6);
            }),
            Want::Ok,
        ),
        ("icmp without ports", with(s(), |x| x.proto = Some(ipproto::ICMP)), Want::Ok),
        (
            "every field, v4",
            Selector {
                family: fam4,
                proto: Some(ipproto::TCP),
                src: Some(net24),
                dst: Some(pfx(v4(203, 0, 113, 0), 24)),
                src_port: ports(1024, 65535),
                dst_port: ports(443, 443),
                mark: mark(0x10, 0xf0),
                nat_addr: Some(v4(198, 51, 100, 1)),
                gateway: Some(v4(192, 0, 2, 254)),
                interface: name("igb0"),
                label: label("wan-failover"),
            },
            Want::Ok,
        ),
    ]
}

#[test]
fn selector_check_table() {
    let cases = selector_cases();
    assert!(cases.len() > 50);
    for (case, sel, want) in cases {
        let got = sel.check();
        if let Ok(checked) = &got {
            assert_eq!(checked.get(), &sel, "{case}");
            assert_eq!(checked.family(), sel.implied_family(), "{case}");
        }
        expect(case, got, want);
    }
}

#[test]
fn checked_selector_reports_the_family() {
    let sel = Selector { dst: Some(pfx(v6("2001:db8::"), 32)), ..tcp() };
    let checked = sel.check().unwrap();
    assert_eq!(checked.family(), Some(AddressFamily::Ipv6));
    assert_eq!(checked.to_string(), "proto tcp dst 2001:db8::/32");
    assert_eq!(checked.into_inner(), sel);
    assert_eq!(tcp().check().unwrap().family(), None);
    let sel = Selector { nat_addr: Some(v4(198, 51, 100, 1)), ..Selector::default() };
    assert_eq!(sel.check().unwrap().family(), Some(AddressFamily::Ipv4));
}

// ---------------------------------------------------------------------------------------------
// StateKey::check and StateHandle::check

fn key(proto: u8, src: IpAddr, dst: IpAddr, l4: L4) -> StateKey {
    StateKey { proto, src, dst, l4 }
}

#[test]
fn state_key_check_table() {
    let a4 = v4(192, 0, 2, 1);
    let b4 = v4(198, 51, 100, 1);
    let a6 = v6("2001:db8::1");
    let b6 = v6("2001:db8::2");
    let ports = L4::Ports { src: 40000, dst: 443 };
    let icmp = L4::Icmp { id: 7, kind: 8, code: 0 };
    let cases = [
        ("tcp v4 ports", key(ipproto::TCP, a4, b4, ports), Want::Ok),
        ("udp v6 ports", key(ipproto::UDP, a6, b6, ports), Want::Ok),
        ("sctp ports", key(ipproto::SCTP, a4, b4, ports), Want::Ok),
        ("gre ports (keys)", key(ipproto::GRE, a4, b4, ports), Want::Ok),
        ("gre none", key(ipproto::GRE, a4, b4, L4::None), Want::Ok),
        ("icmp v4", key(ipproto::ICMP, a4, b4, icmp), Want::Ok),
        ("icmpv6 v6", key(ipproto::ICMPV6, a6, b6, icmp), Want::Ok),
        ("esp none", key(50, a6, b6, L4::None), Want::Ok),
        (
            "mixed family",
            key(ipproto::TCP, a4, b6, ports),
            Want::Invalid("state key", "source and destination differ in family"),
        ),
        ("proto 0", key(0, a4, b4, L4::None), Want::Invalid("state key", "protocol 0")),
        (
            "tcp without ports",
            key(ipproto::TCP, a4, b4, L4::None),
            Want::Invalid("state key", "does not fit protocol 6"),
        ),
        (
            "udp with icmp",
            key(ipproto::UDP, a4, b4, icmp),
            Want::Invalid("state key", "does not fit protocol 17"),
        ),
        (
            "icmp over v6",
            key(ipproto::ICMP, a6, b6, icmp),
            Want::Invalid("state key", "does not fit protocol 1"),
        ),
        (
            "icmpv6 over v4",
            key(ipproto::ICMPV6, a4, b4, icmp),
            Want::Invalid("state key", "does not fit protocol 58"),
        ),
        (
            "icmp none",
            key(ipproto::ICMP, a4, b4, L4::None),
            Want::Invalid("state key", "layer-4 identity None"),
        ),
        (
            "esp with ports",
            key(50, a4, b4, ports),
            Want::Invalid("state key", "does not fit protocol 50"),
        ),
    ];
    for (case, k, want) in cases {
        expect(case, k.check(), want);
        let handle = StateHandle::Conntrack { orig: k, id: 1, zone: 0 };
        expect(case, handle.check(), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Request::check

fn good_handle() -> StateHandle {
    StateHandle::Conntrack {
        orig: key(
            ipproto::TCP,
            v4(192, 0, 2, 1),
            v4(198, 51, 100, 1),
            L4::Ports { src: 1, dst: 2 },
        ),
        id: 42,
        zone: 0,
    }
}

#[test]
fn request_check_table() {
    let p = Limits::PROTOCOL;
    let small = Limits { max_selectors: 2, max_handles: 3, ..Limits::PROTOCOL };
    let good = tcp();
    let good2 = Selector { mark: Some(MarkMatch { value: 1, mask: 1 }), ..Selector::default() };
    let host_bits = Selector { src: Some(pfx(v4(10, 0, 0, 1), 8)), ..Selector::default() };
    let bad_handle = StateHandle::Conntrack {
        orig: key(ipproto::ICMP, v6("2001:db8::1"), v6("2001:db8::2"), L4::None),
        id: 1,
        zone: 0,
    };
    let hello = |client: String| Request::Hello(Hello { protocol_version: 1, client });
    let count = |selectors: Vec<Selector>| Request::Count { selectors };
    let kill =
        |selectors: Vec<Selector>| Request::KillMatching { selectors, match_opposite: false };
    let handles =
        |handles: Vec<StateHandle>| Request::KillHandles { handles, match_opposite: false };
    let twins = |handles: Vec<StateHandle>| Request::KillHandles { handles, match_opposite: true };
    let pf = |id: u64, creator_id: u32| StateHandle::Pf { id, creator_id };
    let flush = |name: Option<&str>| Request::Flush { interface: name.map(|n| IfName(n.into())) };
    let cases: Vec<(&str, Request, Limits, Want, usize)> = vec![
        ("hello", hello("statecull cli".into()), p, Want::Ok, 0),
        ("hello 64-byte name", hello("c".repeat(64)), p, Want::Ok, 0),
        (
            "hello 65-byte name",
            hello("c".repeat(65)),
            p,
            Want::TooMany("bytes in the client name", 65, 64),
            0,
        ),
        ("snapshot all", Request::Snapshot { selector: None }, p, Want::Ok, 0),
        ("snapshot selector", Request::Snapshot { selector: Some(good.clone()) }, p, Want::Ok, 1),
        (
            "snapshot empty selector",
            Request::Snapshot { selector: Some(Selector::default()) },
            p,
            Want::Empty("would match every state"),
            0,
        ),
        ("count none (table size)", count(vec![]), p, Want::Ok, 0),
        ("count two", count(vec![good.clone(), good2.clone()]), p, Want::Ok, 2),
        (
            "count with an empty one",
            count(vec![good.clone(), Selector::default()]),
            p,
            Want::Empty("would match every state"),
            0,
        ),
        (
            "count with host bits",
            count(vec![host_bits.clone()]),
            p,
            Want::Invalid("prefix", "did you mean 10.0.0.0/8?"),
            0,
        ),
        ("count 64", count(vec![good.clone(); 64]), p, Want::Ok, 64),
        ("count 65", count(vec![good.clone(); 65]), p, Want::TooMany("selectors", 65, 64), 0),
        ("count 3 of 2", count(vec![good.clone(); 3]), small, Want::TooMany("selectors", 3, 2), 0),
        ("count 2 of 2", count(vec![good.clone(); 2]), small, Want::Ok, 2),
        (
            "kill matching none",
            kill(vec![]),
            p,
            Want::Empty("KillMatching without selectors; use Flush"),
            0,
        ),
        ("kill matching one", kill(vec![good.clone()]), p, Want::Ok, 1),
        (
            "kill matching 65",
            kill(vec![good.clone(); 65]),
            p,
            Want::TooMany("selectors", 65, 64),
            0,
        ),
        (
            "kill matching 3 of 2",
            kill(vec![good.clone(); 3]),
            small,
            Want::TooMany("selectors", 3, 2),
            0,
        ),
        (
            "kill matching bad second",
            kill(vec![good.clone(), host_bits]),
            p,
            Want::Invalid("prefix", "host bits"),
            0,
        ),
        (
            "kill matching empty second",
            kill(vec![
                good.clone(),
                Selector { family: Some(AddressFamily::Ipv6), ..Selector::default() },
            ]),
            p,
            Want::Empty("of family ipv6"),
            0,
        ),
        (
            "kill handles none",
            handles(vec![]),
            p,
            Want::Invalid("request", "KillHandles without handles"),
            0,
        ),
        ("kill handles one", handles(vec![good_handle()]), p, Want::Ok, 0),
        ("kill handles 3 of 3", handles(vec![good_handle(); 3]), small, Want::Ok, 0),
        (
            "kill handles 4 of 3",
            handles(vec![good_handle(); 4]),
            small,
            Want::TooMany("handles", 4, 3),
            0,
        ),
        (
            "kill handles bad key",
            handles(vec![good_handle(), bad_handle]),
            p,
            Want::Invalid("state key", "does not fit protocol 1"),
            0,
        ),
        ("kill handles and twins", twins(vec![good_handle(), pf(7, 0x1234)]), p, Want::Ok, 0),
        ("kill pf handle creator 0", handles(vec![pf(7, 0)]), p, Want::Ok, 0),
        (
            "kill pf handle creator 0 and its twin",
            twins(vec![pf(8, 0x1234), pf(7, 0)]),
            p,
            Want::Invalid("handle", "creator id as listed"),
            0,
        ),
        ("flush all", flush(None), p, Want::Ok, 0),
        ("flush eth0", flush(Some("eth0")), p, Want::Ok, 0),
        ("flush bad name", flush(Some("../etc")), p, Want::Invalid("interface name", "'/'"), 0),
        (
            "flush long name",
            flush(Some("abcdefghijklmnopq")),
            p,
            Want::Invalid("interface name", "longer than 15"),
            0,
        ),
    ];
    for (case, req, limits, want, n_checked) in cases {
        let got = req.clone().check(&limits, &Capabilities::any());
        if let Ok(checked) = &got {
            assert_eq!(checked.verb(), req.verb(), "{case}");
            let checked = checked.selectors();
            assert_eq!(checked.len(), n_checked, "{case}");
            // The checked selectors are the request's, in request order.
            let sent: Vec<&Selector> = match &req {
                Request::Count { selectors } | Request::KillMatching { selectors, .. } => {
                    selectors.iter().collect()
                }
                Request::Snapshot { selector } => selector.iter().collect(),
                _ => Vec::new(),
            };
            let got_sels: Vec<&Selector> = checked.iter().map(|c| c.get()).collect();
            assert_eq!(got_sels, sent, "{case}");
        }
        expect(case, got, want);
    }
}

/// What the backend offers is checked in the same place: a selector field or a flush by
/// interface the capabilities lack is refused as `Unsupported`, whatever else is right.
#[test]
fn request_check_refuses_what_the_backend_lacks() {
    let p = Limits::PROTOCOL;
    let conntrack_like = Capabilities {
        selector_fields: SelectorField::ALL
            .iter()
            .copied()
            .filter(|f| !matches!(f, SelectorField::Gateway | SelectorField::Interface))
            .collect(),
        flush_by_interface: false,
        ruleset_ticket: false,
        ..Capabilities::any()
    };
    let gw = Selector { gateway: Some(v4(198, 51, 100, 254)), ..Selector::default() };
    let cases = [
        (
            Request::Count { selectors: vec![tcp(), gw.clone()] },
            Unsupported::Field(SelectorField::Gateway),
        ),
        (
            Request::KillMatching { selectors: vec![gw.clone()], match_opposite: true },
            Unsupported::Field(SelectorField::Gateway),
        ),
        (Request::Snapshot { selector: Some(gw) }, Unsupported::Field(SelectorField::Gateway)),
        (Request::Flush { interface: Some(IfName("igb1".into())) }, Unsupported::FlushByInterface),
        (Request::RulesetTicket, Unsupported::RulesetTicket),
    ];
    for (req, what) in cases {
        let e = req.clone().check(&p, &conntrack_like).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unsupported, "{req:?}");
        assert!(
            matches!(&e, ProtoError::Unsupported { what: w, .. } if *w == what),
            "{req:?}: {e}"
        );
        // The same request is fine for a backend that has it.
        assert!(req.check(&p, &Capabilities::any()).is_ok());
    }
    // Meaning is checked before capabilities: a bad selector says what is wrong with it.
    let bad = Selector {
        gateway: Some(v4(198, 51, 100, 254)),
        src: Some(pfx(v4(10, 0, 0, 1), 8)),
        ..Selector::default()
    };
    let e = Request::Count { selectors: vec![bad] }.check(&p, &conntrack_like).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
}

#[test]
fn error_reply_carries_code_and_message() {
    let e = Selector::default().check().unwrap_err();
    let reply = ErrorReply::from(&e);
    assert_eq!(reply.code, ErrorCode::EmptySelector);
    assert_eq!(reply.message, e.to_string());
    assert!(reply.to_string().starts_with("empty-selector: empty selector: "));
}

// ---------------------------------------------------------------------------------------------
// Parsing operator text.

#[test]
fn prefix_parsing() {
    let ok = [
        ("198.51.100.0/24", pfx(v4(198, 51, 100, 0), 24), false),
        ("198.51.100.7", pfx(v4(198, 51, 100, 7), 32), true),
        ("198.51.100.7/32", pfx(v4(198, 51, 100, 7), 32), true),
        ("0.0.0.0/0", pfx(v4(0, 0, 0, 0), 0), false),
        ("2001:db8::/32", pfx(v6("2001:db8::"), 32), false),
        ("2001:db8::1", pfx(v6("2001:db8::1"), 128), true),
        ("::/0", pfx(v6("::"), 0), false),
    ];
    for (text, want, host) in ok {
        let got: Prefix = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        assert_eq!(got.is_host(), host, "{text}");
        if host {
            assert_eq!(got, Prefix::host(got.addr), "{text}");
        }
    }
    let bad = [
        ("198.51.100.1/24", "198.51.100.1/24 has host bits set (did you mean 198.51.100.0/24?)"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("198.51.100.0/33", "length 33 is longer than 32 bits"),
        ("2001:db8::/129", "longer than 128 bits"),
        ("10.0.0.0/x", "length \"x\" is not a number 0..=32"),
        ("2001:db8::/", "length \"\" is not a number 0..=128"),
        ("10.0.0.0/256", "is not a number"),
        ("10.0.0.0/-1", "is not a number"),
        ("10.0.0.0/8/8", "length \"8/8\" is not a number"),
        ("example.com/24", "\"example.com\" is not an IP address"),
        ("10.0.0/8", "is not an IP address"),
        ("", "\"\" is not an IP address"),
        ("/24", "is not an IP address"),
        (" 10.0.0.0/8", "is not an IP address"),
        // Rust's integer parsing takes a leading '+'; operator text may not.
        ("10.0.0.0/+8", "length \"+8\" is not a number 0..=32 (write digits only, without a sign)"),
        ("2001:db8::/+32", "length \"+32\" is not a number 0..=128 (write digits only"),
        ("10.0.0.0/+", "length \"+\" is not a number"),
        ("10.0.0.0/ 8", "length \" 8\" is not a number 0..=32"),
    ];
    for (text, why) in bad {
        expect(text, text.parse::<Prefix>(), Want::Parse("prefix", why));
    }
}

#[test]
fn mark_parsing() {
    let ok = [
        ("1", 1, u32::MAX),
        ("0x1/0xff", 1, 0xff),
        ("1/255", 1, 255),
        ("0X10/0XF0", 0x10, 0xf0),
        ("0xffffffff", u32::MAX, u32::MAX),
        ("0/1", 0, 1),
        ("0", 0, u32::MAX),
    ];
    for (text, value, mask) in ok {
        let got: MarkMatch = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, MarkMatch { value, mask }, "{text}");
    }
    let bad = [
        ("0x1/0", "mask 0 matches every state"),
        ("0x100/0xff", "bits outside the mask"),
        ("3/1", "bits outside the mask"),
        ("abc", "\"abc\" is not a 32-bit number"),
        ("4294967296", "is not a 32-bit number"),
        ("0x1ffffffff", "is not a 32-bit number"),
        ("0x", "is not a 32-bit number"),
        ("-1", "is not a 32-bit number"),
        ("", "is not a 32-bit number"),
        ("1/", "mask \"\" is not a 32-bit number"),
        ("/1", "\"\" is not a 32-bit number"),
        ("1/2/3", "mask \"2/3\" is not a 32-bit number"),
        // Digits only (after an optional 0x): no sign, although Rust's parsers take '+'.
        ("+1", "\"+1\" is not a 32-bit number (write digits only, without a sign)"),
        ("1/+255", "mask \"+255\" is not a 32-bit number (write digits only, without a sign)"),
        ("0x+1", "\"0x+1\" is not a 32-bit number (write digits only, without a sign)"),
        ("0x1/0x+ff", "mask \"0x+ff\" is not a 32-bit number (write digits only"),
        ("+0x1", "\"+0x1\" is not a 32-bit number (write digits only"),
        ("0x-1", "\"0x-1\" is not a 32-bit number (write digits only"),
        ("0x 1", "\"0x 1\" is not a 32-bit number"),
    ];
    for (text, why) in bad {
        expect(text, text.parse::<MarkMatch>(), Want::Parse("mark", why));
    }
}

#[test]
fn port_range_parsing() {
    let ok = [
        ("443", 443, 443),
        ("1000-2000", 1000, 2000),
        ("0", 0, 0),
        ("65535", 65535, 65535),
        ("5-5", 5, 5),
        ("0-65535", 0, 65535),
    ];
    for (text, first, last) in ok {
        let got: PortRange = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, PortRange { first, last }, "{text}");
    }
    expect(
        "2000-1000",
        "2000-1000".parse::<PortRange>(),
        Want::Parse("port range", "the first port is above the last"),
    );
    let bad = [
        ("65536", "\"65536\" is not a port 0..=65535"),
        ("http", "\"http\" is not a port"),
        ("", "\"\" is not a port"),
        ("1-", "\"\" is not a port"),
        ("-1", "\"\" is not a port"),
        ("1-2-3", "\"2-3\" is not a port"),
        ("443 ", "is not a port"),
        ("1000-70000", "\"70000\" is not a port"),
        // Digits only: no sign, although Rust's parsers take '+'.
        ("+80", "\"+80\" is not a port 0..=65535 (write digits only, without a sign)"),
        ("+1000-2000", "\"+1000\" is not a port 0..=65535 (write digits only"),
        ("1000-+2000", "\"+2000\" is not a port 0..=65535 (write digits only"),
        ("+", "\"+\" is not a port"),
    ];
    for (text, why) in bad {
        expect(text, text.parse::<PortRange>(), Want::Parse("port", why));
    }
}

#[test]
fn protocol_parsing() {
    let ok = [
        ("tcp", 6),
        ("TCP", 6),
        ("udp", 17),
        ("icmp", 1),
        ("icmpv6", 58),
        ("ipv6-icmp", 58),
        ("icmp6", 58),
        ("sctp", 132),
        ("dccp", 33),
        ("gre", 47),
        ("UdpLite", 136),
        ("6", 6),
        ("50", 50),
        ("255", 255),
    ];
    for (text, n) in ok {
        assert_eq!(ipproto::parse(text), Ok(n), "{text}");
    }
    expect("0", ipproto::parse("0"), Want::Parse("protocol", "0 is not a transport protocol"));
    for text in ["256", "-1", "foo", "", "tcp ", "0x6", "+6", "+17", "+", " 6"] {
        expect(text, ipproto::parse(text), Want::Parse("protocol", "expected tcp, udp, icmp"));
    }
    // A sign is refused with a hint, although Rust's integer parsing takes a leading '+'.
    for text in ["+6", "+255", "-1"] {
        expect(
            text,
            ipproto::parse(text),
            Want::Parse("protocol", "or a number 1..=255 (write digits only, without a sign)"),
        );
    }
    // Names round-trip through `name`.
    for n in 1..=255u8 {
        assert_eq!(ipproto::parse(&ipproto::name(n)), Ok(n));
    }
}

#[test]
fn family_and_name_parsing() {
    for (text, fam) in [
        ("ipv4", AddressFamily::Ipv4),
        ("INET", AddressFamily::Ipv4),
        ("4", AddressFamily::Ipv4),
        ("inet6", AddressFamily::Ipv6),
        ("6", AddressFamily::Ipv6),
    ] {
        assert_eq!(text.parse::<AddressFamily>(), Ok(fam), "{text}");
    }
    expect(
        "ip4",
        "ip4".parse::<AddressFamily>(),
        Want::Parse("address family", "expected 4 or 6 (also spelt ipv4 or inet, ipv6 or inet6)"),
    );
    assert_eq!("eth0".parse::<IfName>(), Ok(IfName("eth0".into())));
    expect("eth/0", "eth/0".parse::<IfName>(), Want::Parse("interface name", "'/'"));
    assert_eq!("web".parse::<Label>(), Ok(Label("web".into())));
    expect(
        "long label",
        "x".repeat(64).parse::<Label>(),
        Want::Parse("label", "longer than 63 bytes"),
    );
}

// Display and FromStr agree on every valid value.

fn valid_prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| pfx(IpAddr::V4(a.into()), len).network()),
        (any::<u128>(), 0u8..=128).prop_map(|(a, len)| pfx(IpAddr::V6(a.into()), len).network()),
    ]
}

proptest! {
    #[test]
    fn prefix_display_parses_back(p in valid_prefix()) {
        prop_assert!(p.check().is_ok());
        prop_assert_eq!(p.to_string().parse::<Prefix>()?, p);
        prop_assert!(p.contains(&p.addr));
    }

    #[test]
    fn mark_display_parses_back(v in any::<u32>(), mask in 1u32..) {
        let m = MarkMatch { value: v & mask, mask };
        prop_assert_eq!(m.to_string().parse::<MarkMatch>()?, m);
    }

    #[test]
    fn port_range_display_parses_back(a in any::<u16>(), b in any::<u16>()) {
        let r = PortRange { first: a.min(b), last: a.max(b) };
        prop_assert_eq!(r.to_string().parse::<PortRange>()?, r);
    }

    /// `check` refuses exactly the prefixes whose host bits are set or whose length is too
    /// long, and the suggested network passes.
    #[test]
    fn prefix_check_matches_network(a in any::<u32>(), len in any::<u8>()) {
        let p = pfx(IpAddr::V4(a.into()), len);
        let valid = len <= 32 && p.network().addr == p.addr;
        prop_assert_eq!(p.check().is_ok(), valid);
        prop_assert!(p.network().check().is_ok());
    }
}
