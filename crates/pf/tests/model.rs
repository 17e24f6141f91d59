//! The pf model against pf-kernel.md §2: twins, gateways, ambiguity, id kills, clears, and
//! an independent brute-force computation on random tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code
use std::collections::HashSet;
use std::net::IpAddr;

use proptest::prelude::*;
use statecull_pf::model::{PfModel, match_port};
use statecull_pf::table_gen::{Kind, ROUTER, Spec, router_table};
use statecull_pf::types::twin_search;
use statecull_pf::types::{
    AF_INET6, Direction, PfKey, PfKill, PfState, RuleAddr, af_of, pf_addr_bytes, port_op,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(a0: &str, p0: u16, a1: &str, p1: u16) -> PfKey {
    let a0 = ip(a0);
    PfKey { af: af_of(&a0), proto: 6, addr: [a0, ip(a1)], port: [p0, p1] }
}

fn st(dir: Direction, ifname: &str, wire: PfKey, stack: PfKey, rt: Option<&str>) -> PfState {
    PfState {
        id: 0,
        creatorid: 0,
        direction: dir,
        ifname: ifname.into(),
        orig_ifname: ifname.into(),
        wire,
        stack,
        rt_addr: rt.map(ip),
        rule: 0,
        packets: [0; 2],
        bytes: [0; 2],
        creation: 0,
        expire: 0,
    }
}

/// A policy-routed connection C:cp -> S:443 out of WAN `w` (0 or 1): LAN state, WAN twin.
fn connection(m: &mut PfModel, client: &str, cport: u16, server: &str, w: usize) -> (u64, u64) {
    let (wan_if, nat, gw) =
        [("igb1", "198.51.100.1", "198.51.100.254"), ("igb2", "203.0.113.1", "203.0.113.254")][w];
    let lan = key(client, cport, server, 443);
    let a = m.insert(st(Direction::In, "igb0", lan, lan, Some(gw))).unwrap();
    let b = m
        .insert(st(
            Direction::Out,
            wan_if,
            key(server, 443, nat, cport),
            key(server, 443, client, cport),
            None,
        ))
        .unwrap();
    (a, b)
}

fn by_gateway(gw: &str) -> PfKill {
    let gw = ip(gw);
    PfKill {
        rt_addr: RuleAddr::prefix(&gw, 32),
        af: af_of(&gw),
        kill_match: true,
        ..PfKill::default()
    }
}

fn alive(m: &PfModel) -> HashSet<u64> {
    m.states().map(|s| s.id).collect()
}

#[test]
fn lan_state_with_match_opposite_kills_its_nat_twin_and_nothing_else() {
    let mut m = PfModel::new(64, 7);
    let (a, b) = connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    let (c, d) = connection(&mut m, "192.0.2.11", 40001, "198.18.0.5", 0);
    let killed = m.kill_states(&PfKill {
        src: RuleAddr::prefix(&ip("192.0.2.10"), 32),
        kill_match: true,
        ..PfKill::default()
    });
    assert_eq!(killed, 2, "the LAN state and its twin");
    assert_eq!(alive(&m), HashSet::from([c, d]));
    assert!(m.get(a, 7).is_none() && m.get(b, 7).is_none());
    // Without match_opposite the twin is left "in limbo".
    let mut m = PfModel::new(64, 7);
    let (_, b) = connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    let killed = m
        .kill_states(&PfKill { src: RuleAddr::prefix(&ip("192.0.2.10"), 32), ..PfKill::default() });
    assert_eq!(killed, 1);
    assert_eq!(alive(&m), HashSet::from([b]));
}

#[test]
fn killing_gateway_1_leaves_the_same_pair_via_gateway_2_intact() {
    let mut m = PfModel::new(64, 7);
    // Same client and server, two connections (different client ports), one per gateway.
    let (a1, b1) = connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    let (a2, b2) = connection(&mut m, "192.0.2.10", 40001, "198.18.0.5", 1);
    let killed = m.kill_states(&by_gateway("198.51.100.254"));
    assert_eq!(killed, 2);
    assert_eq!(alive(&m), HashSet::from([a2, b2]));
    assert!(m.get(a1, 7).is_none() && m.get(b1, 7).is_none());
    // An IP-pair kill would have taken both connections: that is what key-exact kills avoid.
    let mut m = PfModel::new(64, 7);
    connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    connection(&mut m, "192.0.2.10", 40001, "198.18.0.5", 1);
    let pair = PfKill {
        src: RuleAddr::prefix(&ip("192.0.2.10"), 32),
        dst: RuleAddr::prefix(&ip("198.18.0.5"), 32),
        kill_match: true,
        ..PfKill::default()
    };
    assert_eq!(m.kill_states(&pair), 4);
}

#[test]
fn an_ambiguous_twin_is_left_alive_as_the_kernel_would() {
    let mut m = PfModel::new(64, 7);
    let lan = key("192.0.2.10", 40000, "198.18.0.5", 443);
    let victim = m.insert(st(Direction::In, "igb0", lan, lan, Some("198.51.100.254"))).unwrap();
    // Two if-bound OUT states on different WANs whose stack key is the victim's key swapped.
    let stack = key("198.18.0.5", 443, "192.0.2.10", 40000);
    let t1 = m
        .insert(st(
            Direction::Out,
            "igb1",
            key("198.18.0.5", 443, "198.51.100.1", 40000),
            stack,
            None,
        ))
        .unwrap();
    let t2 = m
        .insert(st(
            Direction::Out,
            "igb2",
            key("198.18.0.5", 443, "203.0.113.1", 40000),
            stack,
            None,
        ))
        .unwrap();
    let killed = m.kill_states(&by_gateway("198.51.100.254"));
    assert_eq!(killed, 1, "only the victim: its twin is ambiguous");
    assert_eq!(alive(&m), HashSet::from([t1, t2]));
    assert!(m.get(victim, 7).is_none());
    assert_eq!(m.cost().key_lookups, 1, "one key-hash lookup per victim");
}

#[test]
fn kill_by_id_ignores_every_other_field() {
    let mut m = PfModel::new(64, 7);
    let (a, b) = connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    let before = m.cost();
    let k = PfKill {
        id: a,
        creatorid: 0, // this host
        ifname: "nonexistent".into(),
        label: "nothing has this label".into(),
        af: AF_INET6,
        kill_match: true,
        ..PfKill::default()
    };
    assert_eq!(m.kill_states(&k), 1);
    assert_eq!(alive(&m), HashSet::from([b]), "no twin: kill_match does not apply to id kills");
    let c = m.cost() - before;
    assert_eq!((c.passes, c.id_lookups, c.states_examined), (0, 1, 0), "O(1)");
    // A wrong creator id finds nothing.
    assert_eq!(m.kill_states(&PfKill::by_id(b, 99)), 0);
}

#[test]
fn clear_by_interface_uses_the_original_interface_of_floating_states() {
    let mut m = PfModel::new(64, 7);
    let (a1, b1) = connection(&mut m, "192.0.2.10", 40000, "198.18.0.5", 0);
    let (a2, b2) = connection(&mut m, "192.0.2.11", 40001, "198.18.0.6", 1);
    // A floating state created on igb1.
    let k = key("198.18.0.9", 53, "198.51.100.1", 5353);
    let mut floating = st(Direction::Out, "all", k, k, None);
    floating.orig_ifname = "igb1".into();
    let f = m.insert(floating).unwrap();
    // Clear ignores every field but the interface (and kill_match).
    assert_eq!(m.clear_states("igb1", false), 2);
    assert_eq!(alive(&m), HashSet::from([a1, a2, b2]));
    assert!(m.get(b1, 7).is_none() && m.get(f, 7).is_none());
    // With kill_match the LAN twins go too.
    assert_eq!(m.clear_states("igb2", true), 2);
    assert_eq!(alive(&m), HashSet::from([a1]));
}

#[test]
fn default_route_states_are_found_by_interface_and_nat_address_not_by_gateway() {
    let g = router_table(&Spec::new(3000, 11)).unwrap();
    let mut m = g.model;
    let default: Vec<_> = g.connections.iter().filter(|c| c.kind == Kind::DefaultWan1).collect();
    assert!(!default.is_empty());
    let default_ids: HashSet<u64> = default.iter().flat_map(|c| c.ids.iter().copied()).collect();
    // The gateway selector never reaches them (their rt_addr is 0)...
    for gw in [ROUTER.gateway[0].0.into(), ROUTER.gateway[0].1.into()] {
        let gw: IpAddr = gw;
        m.kill_states(&PfKill {
            rt_addr: RuleAddr::prefix(&gw, 128.min(if gw.is_ipv4() { 32 } else { 128 })),
            af: af_of(&gw),
            kill_match: true,
            ..PfKill::default()
        });
    }
    let left = alive(&m);
    assert!(
        default_ids.iter().all(|id| left.contains(id)),
        "gateway kills spare default-route states"
    );
    // ...the WAN interface plus its NAT address (the WAN-side state's source) does, and the
    // LAN twin follows with kill_match.
    for nat in [ROUTER.wan_addr[0].0.into(), ROUTER.wan_addr[0].1.into()] {
        let nat: IpAddr = nat;
        m.kill_states(&PfKill {
            ifname: ROUTER.wan_if[0].into(),
            src: RuleAddr::prefix(&nat, if nat.is_ipv4() { 32 } else { 128 }),
            af: af_of(&nat),
            kill_match: true,
            ..PfKill::default()
        });
    }
    let left = alive(&m);
    assert!(default_ids.iter().all(|id| !left.contains(id)), "every default-route state is gone");
    // WAN2's connections are untouched.
    let wan2: HashSet<u64> = g
        .connections
        .iter()
        .filter(|c| c.kind.wan() == Some(1))
        .flat_map(|c| c.ids.iter().copied())
        .collect();
    assert!(wan2.iter().all(|id| left.contains(id)));
}

#[test]
fn generated_tables_pair_every_twin_and_route_by_gateway() {
    let g = router_table(&Spec::new(20_000, 3)).unwrap();
    assert!(g.model.len() >= 20_000);
    let kinds: HashSet<Kind> = g.connections.iter().map(|c| c.kind).collect();
    assert_eq!(kinds.len(), 9, "every kind of connection appears");
    // Every outbound connection's LAN state finds exactly its own WAN state as the twin.
    let m = &g.model;
    for c in g
        .connections
        .iter()
        .filter(|c| c.ids.len() == 2 && !matches!(c.kind, Kind::ForwardWan1 | Kind::ForwardWan2))
    {
        let lan = m.get(c.ids[0], m.hostid()).unwrap();
        let (k, dir) = twin_search(lan);
        let twins: Vec<&PfState> =
            m.states().filter(|s| s.direction == dir && s.stack == k).collect();
        assert_eq!(twins.len(), 1);
        assert_eq!(twins[0].id, c.ids[1]);
    }
    let floating = m.states().filter(|s| s.ifname == "all").count();
    assert!(floating > 0 && floating < m.len());
}

/// An independent reading of pf-kernel.md §2.3/2.4: rows in order, states in row order,
/// twins found by scanning every live state.
fn brute_force(m: &PfModel, k: &PfKill) -> HashSet<u64> {
    let mut alive: Vec<PfState> = m.states().cloned().collect();
    let mut killed = HashSet::new();
    let labels = |s: &PfState| m.rule_labels(s.rule).to_vec();
    let mut i = 0;
    while i < alive.len() {
        let s = alive[i].clone();
        let sk = if k.nat { s.stack } else { s.wire };
        let (src, sport, dst, dport) = match s.direction {
            Direction::Out => (sk.addr[1], sk.port[1], sk.addr[0], sk.port[0]),
            Direction::In => (sk.addr[0], sk.port[0], sk.addr[1], sk.port[1]),
        };
        let addr_ok = |r: &RuleAddr, a: IpAddr| {
            let b = pf_addr_bytes(&a);
            let n = if sk.af == AF_INET6 { 16 } else { 4 };
            let eq = (0..n).all(|j| r.addr[j] & r.mask[j] == b[j] & r.mask[j]);
            eq != r.neg
        };
        let rt = s.rt_addr.unwrap_or_else(|| statecull_pf::types::unspecified(sk.af));
        let m_ok = (k.af == 0 || k.af == sk.af)
            && (k.proto == 0 || k.proto == sk.proto)
            && addr_ok(&k.src, src)
            && addr_ok(&k.dst, dst)
            && addr_ok(&k.rt_addr, rt)
            && (k.src.port_op == 0
                || match_port(k.src.port_op, k.src.port[0], k.src.port[1], sport))
            && (k.dst.port_op == 0
                || match_port(k.dst.port_op, k.dst.port[0], k.dst.port[1], dport))
            && (k.label.is_empty() || labels(&s).contains(&k.label))
            && (k.ifname.is_empty() || k.ifname == s.kill_ifname());
        if !m_ok {
            i += 1;
            continue;
        }
        alive.remove(i);
        killed.insert(s.id);
        if k.kill_match {
            let (twin_key, dir) = match s.direction {
                Direction::Out => (s.stack.swapped(), Direction::In),
                Direction::In => (s.wire.swapped(), Direction::Out),
            };
            // pf_find_state_all: every state on the key's wire list (IN) or stack list
            // (OUT), whatever its direction; one and only one is killed.
            let cands: Vec<usize> =
                alive
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| {
                        if dir == Direction::In { t.wire == twin_key } else { t.stack == twin_key }
                    })
                    .map(|(j, _)| j)
                    .collect();
            if let [j] = cands[..] {
                killed.insert(alive[j].id);
                alive.remove(j);
                if j < i {
                    i -= 1;
                }
            }
        }
    }
    killed
}

/// A filter built from a sample state and random bits: prefixes around its addresses,
/// its gateway, interfaces, labels, port ranges, negation, the stack key, combinations.
fn filter_from(sample: &[PfState], r: u64) -> PfKill {
    let bits = |shift: u32, n: u64| (r >> shift) % n;
    let s = &sample[usize::try_from(bits(0, sample.len() as u64)).unwrap()];
    let (src, sport, dst, _) = s.kill_endpoints();
    let len = u8::try_from(8 + bits(20, 25)).unwrap();
    let plen = |a: &IpAddr| if a.is_ipv4() { len } else { len * 4 };
    let mut k = PfKill { kill_match: bits(16, 2) == 1, ..PfKill::default() };
    let iface = usize::try_from(bits(18, 4)).unwrap();
    match bits(25, 9) {
        0 => k.src = RuleAddr::prefix(&src, plen(&src)),
        1 => k.dst = RuleAddr::prefix(&dst, plen(&dst)),
        2 => match s.rt_addr {
            Some(gw) => {
                k.rt_addr = RuleAddr::prefix(&gw, plen(&gw));
                k.af = af_of(&gw);
            }
            None => k.af = s.wire.af,
        },
        3 => k.ifname = ["igb0", "igb1", "igb2", "all"][iface].into(),
        4 => k.label = ["gw=WAN1", "voip", "let out WAN2", "none"][iface].into(),
        5 => {
            let other = u16::try_from(bits(32, 65536)).unwrap();
            k.proto = s.wire.proto;
            k.src.port_op = port_op::RRG;
            k.src.port = [sport.min(other), sport.max(other)];
        }
        6 => {
            k.src = RuleAddr::prefix(&src, plen(&src));
            k.src.neg = true;
        }
        7 => {
            k.nat = true;
            k.src = RuleAddr::prefix(&src, plen(&src));
        }
        _ => {
            k.ifname = s.kill_ifname().to_owned();
            k.dst = RuleAddr::prefix(&dst, plen(&dst));
        }
    }
    k
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The model kills exactly what an independent brute force says, and counts it right.
    #[test]
    fn model_equals_brute_force(seed in any::<u64>(), states in 20usize..300, rows in 1usize..64, pick in any::<u64>()) {
        let spec = Spec { rows, ..Spec::new(states, seed) };
        let g = router_table(&spec).unwrap();
        let sample: Vec<PfState> = g.model.states().cloned().collect();
        let k = filter_from(&sample, pick);
        let mut m = g.model;
        let expected = brute_force(&m, &k);
        let before = alive(&m);
        let killed = m.kill_states(&k);
        let after = alive(&m);
        let gone: HashSet<u64> = before.difference(&after).copied().collect();
        prop_assert_eq!(&gone, &expected, "filter {:?}", k);
        prop_assert_eq!(killed as usize, expected.len());
    }
}
