//! What a FreeBSD routing socket (`PF_ROUTE`) hands the engine: received buffers decoded as
//! `routes::rtsock` decodes them (message lengths, versions, `rt_msghdr`, the sockaddrs of
//! `rtm_addrs` with `SA_SIZE` padding, netmasks of any length). Nothing may panic; a decoded
//! route message's netmask fits its family; the "uses the gateway" decision is consistent.
//! The same buffers are decoded as address changes (`parse_addresses`, `struct
//! ifa_msghdr`): no panic, and no IPv6 link-local address comes out.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use statecull_engine::routes::addrs::AddrMsg;
use statecull_engine::routes::rtsock::{Gateway, Message, default_uses, parse, parse_addresses};

fuzz_target!(|data: &[u8]| {
    if let Ok(changes) = parse_addresses(data) {
        for c in changes {
            if let AddrMsg::Added { address: IpAddr::V6(a), .. }
            | AddrMsg::Removed { address: IpAddr::V6(a), .. } = c
            {
                assert!(a.segments()[0] & 0xffc0 != 0xfe80, "{a}");
            }
        }
    }
    let Ok(msgs) = parse(data) else { return };
    let gw = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 254));
    for m in msgs {
        let Message::Route(r) = m else { continue };
        if let Some(p) = r.prefix_len {
            let max = if matches!(r.dst, Some(IpAddr::V6(_))) { 128 } else { 32 };
            assert!(p <= max, "{r:?}");
        }
        if let Ok(true) = default_uses(&r, gw) {
            assert!(r.is_default() && r.gateway == Some(Gateway::Ip(gw)), "{r:?}");
        }
    }
});
