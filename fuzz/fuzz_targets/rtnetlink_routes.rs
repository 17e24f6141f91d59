//! What the kernel sends the engine's route watcher: received rtnetlink buffers of a route
//! dump and of a nexthop dump, decoded as the watcher decodes them (`routes::parse_routes`
//! and `routes::fuzzing::decode_dump`: message walk, `rtmsg`, route attributes, multipath,
//! `RTA_VIA`, nexthop objects and groups). Input: two bytes giving the route buffer's
//! length, the route buffer, then the nexthop buffer. Nothing may panic; every route is
//! consistent (its prefix fits its family); both decoders agree; `default_routes_via` finds
//! exactly the default routes through a next hop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_engine::routes::{Route, default_routes_via, fuzzing::decode_dump, parse_routes};
use statecull_proto::AddressFamily;

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
});

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
