//! What the kernel sends the engine's route watcher: received rtnetlink buffers of a route
//! dump and of a nexthop dump, decoded as the watcher decodes them (`routes::parse_routes`
//! and `routes::fuzzing::decode_dump`: message walk, `rtmsg`, route attributes, multipath,
//! `RTA_VIA`, nexthop objects and groups). Input: two bytes giving the route buffer's
//! length, the route buffer, then the nexthop buffer; the second buffer is also decoded as a
//! rule dump (`routes::fuzzing::decode_rules`: `fib_rule_hdr`, rule attributes). Nothing may
//! panic; every route is consistent (its prefix fits its family); both decoders agree;
//! `default_routes_via` finds exactly the default routes through a next hop; the routing
//! decision over the decoded rules and routes (`Snapshot`) gives sorted, distinct outcomes,
//! at least one, the same whatever order rules of distinct priorities came in, and "moved off" is exactly "not
//! used".
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_engine::routes::fuzzing::{decode_dump, decode_rules};
use statecull_engine::routes::{Flow, Outcome, Route, Snapshot, default_routes_via, parse_routes};
use statecull_proto::{AddressFamily, MarkMatch};

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (routes, nexthops) = rest.split_at(split);

    let simple = parse_routes(routes);
    if let Ok(found) = &simple {
        found.iter().for_each(check);
        lookups(found);
    }
    // Without nexthop objects, the watcher's decoding is parse_routes plus resolution.
    match (decode_dump(routes, &[], None), &simple) {
        (Ok(resolved), Ok(plain)) => assert_eq!(&resolved, plain),
        (Ok(_), Err(e)) => panic!("decode_dump accepted what parse_routes refused: {e}"),
        (Err(_), _) => {}
    }
    for seq in [None, Some(1)] {
        if let Ok(found) = decode_dump(routes, nexthops, seq) {
            found.iter().for_each(check);
            lookups(&found);
        }
    }
    if let (Ok(found), Ok(rules)) = (&simple, decode_rules(nexthops, None)) {
        decide(found, &rules);
    }
});

fn decide(routes: &[Route], rules: &[statecull_engine::routes::Rule]) {
    let snap = Snapshot::new(rules.to_vec(), routes.to_vec());
    let mut reversed = rules.to_vec();
    reversed.reverse();
    let back = Snapshot::new(reversed, routes.to_vec());
    let not_from = vec!["eth1".to_string()];
    // Rules of equal priority keep the kernel's listing order, which reversing changes.
    let mut keys: Vec<_> =
        rules.iter().map(|r| (r.family == AddressFamily::Ipv6, r.priority)).collect();
    keys.sort();
    let distinct = keys.windows(2).all(|w| w[0] != w[1]);
    for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
        for mark in [None, Some(MarkMatch { value: 0x100, mask: 0x3f00 })] {
            let flow = snap.flow_for(family, mark, not_from.clone());
            let out = snap.outcomes(&flow);
            assert!(!out.is_empty(), "a walk always ends somewhere");
            assert!(out.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            if distinct {
                assert_eq!(out, back.outcomes(&flow), "rule order decided by priority alone");
            }
            for o in &out {
                if let Outcome::Via { gateways, .. } = o {
                    for gw in gateways {
                        assert!(snap.uses(&flow, *gw) && !snap.moved_off(&flow, *gw));
                    }
                }
            }
            let unmarked = Flow::unmarked(family, not_from.clone());
            let _ = snap.outcomes(&unmarked);
        }
    }
}

fn check(r: &Route) {
    if let Some(p) = r.dst {
        assert_eq!(AddressFamily::of(&p.addr), r.family, "destination of another family");
        assert!(p.len <= r.family.bits(), "prefix longer than its family");
    }
    assert_eq!(r.is_default(), r.dst.is_none_or(|p| p.len == 0));
}

fn lookups(routes: &[Route]) {
    for r in routes {
        for gw in &r.gateways {
            let via = default_routes_via(routes, *gw);
            assert_eq!(via.iter().any(|v| std::ptr::eq(*v, r)), r.is_default());
            assert!(via.iter().all(|v| v.is_default() && v.gateways.contains(gw)));
        }
    }
}
